"""Runtimes that transcribe with a model: ours in torch, whisper.cpp, CTranslate2 (faster-whisper).

Every runtime decodes the same way, so times and WERs compare: greedy (one candidate, no temperature
fallback), no timestamps, English, each clip on its own, the same thread count. Real runtimes load from a
path only (a bare model name would make pywhispercpp download one).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.deploy.ggml_lib import GgmlType
from engine.errors import UserError
from engine.quant.formats import QuantizedTensor
from engine.quant.layer_table import OUTPUT_LAYER
from engine.speech.transcribe import transcribe
from engine.whisper.models import LoadedModel


class RuntimeUnavailableError(UserError):
    """A runtime that cannot run this model."""


def default_threads() -> int:
    return torch.get_num_threads()


@dataclass
class TorchRuntime:
    """Our model in torch (quantized models run as dequantized float weights: fake quant)."""

    loaded: LoadedModel
    threads: int
    fake_quant: bool = False
    batch_size: int = 1

    @property
    def label(self) -> str:
        return f"torch{' (fake quant)' if self.fake_quant else ''}, {self.threads} threads"

    def transcribe(self, audios: Sequence[np.ndarray]) -> list[str]:
        return transcribe(self.loaded, list(audios), batch_size=self.batch_size)


AUTO_AUDIO_CTX = -1
FULL_AUDIO_CTX = 1500  # encoder frames in Whisper's 30 s window
AUDIO_CTX_MARGIN = 64  # frames (1.28 s) beyond the clip, so its end is not cut


def fitted_audio_ctx(samples: int, sample_rate: int = 16000) -> int:
    """Encoder frames that cover a clip of this many samples, plus a margin (at most the full window)."""
    return min(FULL_AUDIO_CTX, -(-samples * 50 // sample_rate) + AUDIO_CTX_MARGIN)


@dataclass
class WhisperCppRuntime:
    """whisper.cpp (the pywhispercpp wheel) on a model file written by engine/deploy/whisper_cpp_export.py."""

    model_file: Path
    threads: int
    container: str
    # 0: the full 30 s encoder window (1500 frames, what Whisper was trained on); N: N frames (20 ms each);
    # AUTO_AUDIO_CTX: each clip's own length plus a margin (faster on short clips, at some WER cost).
    audio_ctx: int = 0
    _model: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from pywhispercpp.model import Model

        if not Path(self.model_file).is_file():
            raise RuntimeUnavailableError(f"{self.model_file} is not a whisper.cpp model file.")
        self._model = Model(str(self.model_file), n_threads=self.threads, redirect_whispercpp_logs_to=None,
                            print_progress=False, print_realtime=False, no_timestamps=True, language="en",
                            temperature=0.0, temperature_inc=0.0, greedy={"best_of": 1}, no_context=True,
                            audio_ctx=self.audio_ctx)

    @property
    def label(self) -> str:
        return whisper_cpp_label(self.container, self.threads, self.audio_ctx)

    def transcribe(self, audios: Sequence[np.ndarray]) -> list[str]:
        out = []
        for audio in audios:
            params = {"audio_ctx": fitted_audio_ctx(len(audio))} if self.audio_ctx == AUTO_AUDIO_CTX else {}
            segments = self._model.transcribe(np.ascontiguousarray(audio, dtype=np.float32), **params)
            out.append(" ".join(s.text.strip() for s in segments).strip())
        return out


@dataclass
class CTranslate2Runtime:
    """faster-whisper on a CTranslate2 model folder."""

    model_dir: Path
    threads: int
    compute_type: str = "default"  # the stored type (int8 for an int8 model, float32 for a float one)
    _model: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from faster_whisper import WhisperModel

        self._model = WhisperModel(str(self.model_dir), device="cpu", compute_type=self.compute_type,
                                   cpu_threads=self.threads)

    @property
    def label(self) -> str:
        return ctranslate2_label(self.compute_type, self.threads)

    def transcribe(self, audios: Sequence[np.ndarray]) -> list[str]:
        out = []
        for audio in audios:
            segments, _ = self._model.transcribe(np.asarray(audio, dtype=np.float32), beam_size=1, temperature=0.0,
                                                 without_timestamps=True, condition_on_previous_text=False,
                                                 vad_filter=False, language="en")
            out.append(" ".join(s.text.strip() for s in segments).strip())
        return out


def ctranslate2_label(compute_type: str, threads: int) -> str:
    return f"CTranslate2 {compute_type}, {threads} threads"


def whisper_cpp_label(container: str, threads: int, audio_ctx: int = 0) -> str:
    ctx = {0: "", AUTO_AUDIO_CTX: ", audio_ctx fitted per clip"}.get(audio_ctx, f", audio_ctx {audio_ctx}")
    return f"whisper.cpp {container}, {threads} threads{ctx}"


def _left_in_float(rows, weights: dict, dropped: frozenset[str]) -> frozenset[str]:
    """Block linears a table (rows of (name, bits)) kept in full precision. The output layer is not one of
    them: kept, it is the token embedding every runtime stores its own way."""
    return frozenset(name for name, bits in rows
                     if bits >= 16 and name not in dropped and name not in weights and name != OUTPUT_LAYER)


@dataclass(frozen=True)
class ModelToRun:
    """What a runtime needs: the model and, when quantized, its codes (layer name -> weight)."""

    loaded: LoadedModel
    weights: dict[str, QuantizedTensor] = field(default_factory=dict)
    full_precision: frozenset[str] = frozenset()
    dropped: frozenset[str] = frozenset()
    base_model: str = ""  # the full-precision model it came from (a name load_model accepts)
    meta: dict = field(default_factory=dict, repr=False)  # a saved artifact's metadata, when loaded from one

    @property
    def fake_quant(self) -> bool:
        """Run in torch, quantized (or dropped) weights are float tensors: its time is not the compressed model's."""
        return bool(self.weights or self.dropped)

    @classmethod
    def from_result(cls, result, base_model: str) -> "ModelToRun":
        """A QuantizationResult (engine/quant/quantize.py) as a runtime runs it."""
        dropped = frozenset(result.dropped)
        full = _left_in_float(((r.name, r.bits) for r in result.table), result.tensors, dropped)
        return cls(result.loaded, result.tensors, full, dropped, base_model)

    @classmethod
    def from_artifact(cls, folder: str | Path) -> "ModelToRun":
        """A folder saved by save_quantized, with its codes as they were saved."""
        from safetensors.numpy import load_file

        from engine.quant.artifacts import WEIGHTS_FILE, load_quantized, weights_from

        loaded, meta = load_quantized(folder)
        weights = weights_from(meta, load_file(str(Path(folder) / WEIGHTS_FILE)), loaded.model)
        dropped = frozenset(meta["dropped"])
        full = _left_in_float(((r["name"], r["bits"]) for r in meta["layers"]), weights, dropped)
        return cls(loaded, weights, full, dropped, meta["model"]["name"], meta)

    def write_whisper_cpp(self, out: str | Path, container: GgmlType | None = None):
        """This model as a whisper.cpp file at out (engine/deploy/whisper_cpp_export.py); returns its ExportReport."""
        from engine.deploy.whisper_cpp_export import export_whisper_cpp

        return export_whisper_cpp(self.loaded, self.weights, out, container, self.full_precision, self.dropped)


def whisper_cpp_container(model: ModelToRun) -> GgmlType:
    """The ggml type a whisper.cpp file of model takes by default (the narrowest that carries every layer)."""
    from engine.deploy.ggml_blocks import container_for

    return container_for(model.weights, bool(model.full_precision))


def ctranslate2_compute_type(model: ModelToRun) -> str:
    """What CTranslate2 runs by default: our int8 codes as int8, a float model as float32."""
    return "int8" if model.weights else "float32"


def default_label(name: str, model: ModelToRun, threads: int) -> str:
    """The label open_runtime(name, model, threads) would give, without opening (exporting, loading) anything."""
    if name == "whisper.cpp":
        return whisper_cpp_label(whisper_cpp_container(model).name, threads)
    if name == "ctranslate2":
        return ctranslate2_label(ctranslate2_compute_type(model), threads)
    return TorchRuntime(model.loaded, threads, model.fake_quant).label


def _whisper_cpp(model: ModelToRun, threads: int, workdir: Path, container: GgmlType | None = None,
                 audio_ctx: int = 0, model_file: Path | None = None) -> WhisperCppRuntime:
    """model_file: a whisper.cpp file already written for model in the default container (not written again)."""
    if model_file is not None and container is None:
        return WhisperCppRuntime(Path(model_file), threads, whisper_cpp_container(model).name, audio_ctx)
    report = model.write_whisper_cpp(workdir / "model-ggml.bin", container)
    return WhisperCppRuntime(report.path, threads, report.container, audio_ctx)


def _ctranslate2(model: ModelToRun, threads: int, workdir: Path, compute_type: str | None = None) -> CTranslate2Runtime:
    from engine.deploy.ct2_export import export_ctranslate2
    from engine.whisper.models import REGISTRY

    compute_type = compute_type or ctranslate2_compute_type(model)
    if model.weights:
        folder = export_ctranslate2(model.base_model, model.weights, workdir / "ct2", model.dropped)
        return CTranslate2Runtime(folder, threads, compute_type)
    name = model.base_model or model.loaded.name
    if name not in REGISTRY:
        raise RuntimeUnavailableError(f"the CTranslate2 runtime runs the bundled models ({', '.join(REGISTRY)}), "
                                      f"not {name!r}.")
    return CTranslate2Runtime(REGISTRY[name].locate().model_parts[0].parent, threads, compute_type)


def _torch(model: ModelToRun, threads: int, workdir: Path, **_) -> TorchRuntime:
    return TorchRuntime(model.loaded, threads, model.fake_quant)


RUNTIMES: dict[str, Callable[..., object]] = {"torch": _torch, "whisper.cpp": _whisper_cpp,
                                              "ctranslate2": _ctranslate2}


def open_runtime(name: str, model: ModelToRun, threads: int | None = None, workdir: str | Path | None = None,
                 **options):
    """A ready runtime of the given name for model; whisper.cpp writes its model file under workdir."""
    if name not in RUNTIMES:
        raise RuntimeUnavailableError(f"Unknown runtime {name!r}; choose one of {', '.join(RUNTIMES)}.")
    workdir = Path(workdir or tempfile.mkdtemp(prefix="asrq-runtime-"))
    return RUNTIMES[name](model, threads or default_threads(), workdir, **options)
