"""Runtimes that transcribe with a model: ours in torch, whisper.cpp, CTranslate2 (faster-whisper).

Every runtime decodes the same way, so times and WERs compare: greedy (one candidate, no temperature
fallback), no timestamps, English, each clip on its own, the same thread count. Real runtimes load from a
path only (a bare model name would make pywhispercpp download one).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError
from engine.formats import QuantizedTensor
from engine.ggml_lib import GgmlType
from engine.layer_table import OUTPUT_LAYER
from engine.models import LoadedModel
from engine.transcribe import transcribe

log = logging.getLogger(__name__)


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
    """whisper.cpp (the pywhispercpp wheel) on a model file written by engine/whisper_cpp_export.py."""

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
        ctx = {0: "", AUTO_AUDIO_CTX: ", audio_ctx fitted per clip"}.get(self.audio_ctx, f", audio_ctx {self.audio_ctx}")
        return f"whisper.cpp {self.container}, {self.threads} threads{ctx}"

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
        return f"CTranslate2 {self.compute_type}, {self.threads} threads"

    def transcribe(self, audios: Sequence[np.ndarray]) -> list[str]:
        out = []
        for audio in audios:
            segments, _ = self._model.transcribe(np.asarray(audio, dtype=np.float32), beam_size=1, temperature=0.0,
                                                 without_timestamps=True, condition_on_previous_text=False,
                                                 vad_filter=False, language="en")
            out.append(" ".join(s.text.strip() for s in segments).strip())
        return out


@dataclass(frozen=True)
class ModelToRun:
    """What a runtime needs: the model and, when quantized, its codes (layer name -> weight)."""

    loaded: LoadedModel
    weights: dict[str, QuantizedTensor] = field(default_factory=dict)
    full_precision: frozenset[str] = frozenset()
    dropped: frozenset[str] = frozenset()
    fake_quant: bool = False
    base_model: str = ""  # the full-precision model it came from (a name load_model accepts)
    meta: dict = field(default_factory=dict, repr=False)  # a saved artifact's metadata, when loaded from one

    @classmethod
    def from_result(cls, result, base_model: str) -> "ModelToRun":
        """A QuantizationResult (engine/quantize.py) as a runtime runs it."""
        full = frozenset(r.name for r in result.table
                         if r.bits >= 16 and r.name not in result.dropped and r.name != OUTPUT_LAYER)
        return cls(result.loaded, result.tensors, full, frozenset(result.dropped), result.fake_quant, base_model)

    @classmethod
    def from_artifact(cls, folder: str | Path) -> "ModelToRun":
        """A folder saved by save_quantized, with its codes as they were saved."""
        from safetensors.numpy import load_file

        from engine.artifacts import WEIGHTS_FILE, load_quantized, weights_from

        loaded, meta = load_quantized(folder)
        weights = weights_from(meta, load_file(str(Path(folder) / WEIGHTS_FILE)), loaded.model)
        dropped = frozenset(meta["dropped"])
        full = frozenset(r["name"] for r in meta["layers"] if r["bits"] >= 16 and r["name"] not in dropped
                         and r["name"] not in weights and r["name"] != OUTPUT_LAYER)
        return cls(loaded, weights, full, dropped, meta["fake_quant"], meta["model"]["name"], meta)


def _whisper_cpp(model: ModelToRun, threads: int, workdir: Path, container: GgmlType | None = None,
                 audio_ctx: int = 0) -> WhisperCppRuntime:
    from engine.whisper_cpp_export import export_whisper_cpp

    report = export_whisper_cpp(model.loaded, model.weights, workdir / "model-ggml.bin", container,
                                model.full_precision, model.dropped)
    return WhisperCppRuntime(report.path, threads, report.container, audio_ctx)


def _ctranslate2(model: ModelToRun, threads: int, workdir: Path, compute_type: str | None = None) -> CTranslate2Runtime:
    from engine.ct2_export import export_ctranslate2
    from engine.models import REGISTRY

    if model.weights:
        folder = export_ctranslate2(model.base_model, model.weights, workdir / "ct2", model.dropped)
        return CTranslate2Runtime(folder, threads, compute_type or "int8")
    name = model.base_model or model.loaded.name
    if name not in REGISTRY:
        raise RuntimeUnavailableError(f"the CTranslate2 runtime runs the bundled models ({', '.join(REGISTRY)}), "
                                      f"not {name!r}.")
    return CTranslate2Runtime(REGISTRY[name].locate().model_parts[0].parent, threads, compute_type or "float32")


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
