"""Plain functions behind the page's events: UI values in, display values out.

The only place where gradio meets the engine: engine errors become gr.Error with the engine's sentence,
and gradio's progress bar is handed to the engine as a plain callback.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from engine.audio import SAMPLE_RATE, load_audio
from engine.errors import UserError
from engine.evaluate import TextScorer
from engine.experiment import build_calibration, calibration_clips
from engine.layer_table import LayerSpec, apply_overrides, build_table
from engine.methods import get_method, make_config
from engine.model_cache import ModelCache
from engine.quantize import QuantizationResult, quantize
from engine.samples import SAMPLE_DIR, SampleClip, sample_clips
from engine.textdiff import word_diff
from engine.transcribe import transcribe
from ui import plots

MAX_AUDIO_SECONDS = 10 * 60  # the page transcribes up to ten minutes; the CLI has no limit
APP_CALIBRATION_CLIPS = 16  # fewer than the benchmarks' 32: a quantization on the page takes seconds, not a minute
TABLE_COLUMNS = ["name", "part", "kind", "shape", "bits", "group_size", "alpha", "action"]
KEPT_RESULTS = 4  # quantized models kept in memory for the page


@dataclass
class Explorer:
    """What the page's handlers share: the model cache, quantized results, the sample clips, the scorer."""

    models: ModelCache = field(default_factory=ModelCache)
    samples: dict[str, SampleClip] = field(default_factory=lambda: {c.name: c for c in sample_clips()})
    scorer: TextScorer = field(default_factory=TextScorer)
    results: OrderedDict = field(default_factory=OrderedDict)  # run id -> QuantizationResult, least recent first
    lock: threading.Lock = field(default_factory=threading.Lock)

    # ---------------------------------------------------------------- samples and audio
    def sample_path(self, name: str | None) -> str | None:
        clip = self.samples.get(name or "")
        return str(clip.path) if clip else None

    def sample_choices(self) -> list[tuple[str, str]]:
        return [(f"{c.name}: {c.transcript[:60]}", c.name) for c in self.samples.values() if c.group == "demo"]

    def _audio(self, audio_path: str | None):
        if not audio_path:
            raise gr.Error("Choose a sample clip, upload a file or record something first.")
        return load_audio(audio_path, max_seconds=MAX_AUDIO_SECONDS)

    def _reference(self, audio_path: str, sample_name: str | None) -> str | None:
        clip = self.samples.get(sample_name or "")
        # gradio hands over a cached copy of the sample, which keeps the file name.
        return clip.transcript if clip is not None and Path(audio_path).name == clip.path.name else None

    # ---------------------------------------------------------------- layer table
    def layer_rows(self, model_name: str, bits: int, group_size: int) -> list[list]:
        try:
            table = build_table(self.models.get(model_name).model, int(bits), int(group_size))
        except UserError as exc:
            raise gr.Error(str(exc)) from exc
        return [[r.name, r.part, r.kind, f"{r.out_features}x{r.in_features}", r.bits, r.group_size,
                 "" if r.alpha is None else r.alpha, r.action] for r in table]

    @staticmethod
    def _overrides(rows) -> list[dict]:
        """Dataframe rows -> override dicts; blank alpha means "the method decides"."""
        records = rows.to_dict("records") if hasattr(rows, "to_dict") else [dict(zip(TABLE_COLUMNS, r)) for r in rows]
        out = []
        for row in records:
            alpha = row.get("alpha")
            try:
                out.append({"name": row["name"], "bits": int(row["bits"]), "group_size": int(row["group_size"]),
                            "alpha": None if alpha in ("", None) or alpha != alpha else float(alpha),
                            "action": str(row["action"]).strip()})
            except (TypeError, ValueError) as exc:
                raise gr.Error(f"Layer {row.get('name')}: bits, group size and alpha must be numbers ({exc}).") from exc
        return out

    # ---------------------------------------------------------------- quantize
    def _quantize(self, model_name: str, method: str, bits: int, group_size: int, alpha: float, seed: int,
                  overrides: list[dict] | None, progress) -> tuple[str, QuantizationResult]:
        """Quantize, or reuse the result of the same settings; returns (run id, result)."""
        loaded = self.models.get(model_name)
        settings = {"bits": int(bits), "group_size": int(group_size)}
        if "alpha" in get_method(method).config_cls.setting_names():
            settings["alpha"] = float(alpha)
        config = make_config(method, **settings)
        table: list[LayerSpec] | None = None
        if overrides:
            table = apply_overrides(build_table(loaded.model, config.bits, config.group_size), overrides)
        run_id = self._run_id(model_name, config, table, int(seed))
        with self.lock:
            cached = self.results.get(run_id)
        if cached is None:
            calibration = None
            if get_method(method).needs_calibration:
                progress(0.0, "preparing calibration audio")
                calibration = build_calibration(loaded, calibration_clips(SAMPLE_DIR, APP_CALIBRATION_CLIPS, int(seed)))
            cached = quantize(loaded, config, calibration, layers=table, progress=progress)
            with self.lock:
                self.results[run_id] = cached
                while len(self.results) > KEPT_RESULTS:
                    self.results.popitem(last=False)
        return run_id, cached

    def quantize_model(self, model_name: str, method: str, bits: int, group_size: int, alpha: float, seed: int,
                       rows=None, progress=gr.Progress()):
        """The Quantize button: returns run id, status, and the three figures."""
        try:
            overrides = self._overrides(rows) if rows is not None and len(rows) else None
            run_id, result = self._quantize(model_name, method, bits, group_size, alpha, seed, overrides,
                                             lambda f, msg: progress(f, desc=msg))
        except UserError as exc:
            raise gr.Error(str(exc)) from exc
        title = f"{method} {bits}-bit: error per layer (encoder E, decoder D)"
        return (run_id, self._status(result), plots.error_propagation(result.layer_records, title),
                plots.alpha_and_bits(result.layer_records), plots.size_gauge(result.size))

    def api_quantize(self, model: str = "tiny.en", method: str = "fade", bits: int = 4, group_size: int = 64,
                     alpha: float = 0.5, seed: int = 0, layers_json: str = "") -> dict:
        """Quantize a model; pass the returned run_id to /transcribe. layers_json: optional list of
        {"name", "bits", "group_size", "alpha", "action"} rows overriding single layers."""
        try:
            overrides = json.loads(layers_json) if layers_json.strip() else None
            run_id, result = self._quantize(model, method, bits, group_size, alpha, seed, overrides, lambda f, m: None)
        except json.JSONDecodeError as exc:
            raise gr.Error(f"layers_json is not valid JSON ({exc}).") from exc
        except UserError as exc:
            raise gr.Error(str(exc)) from exc
        return {"run_id": run_id, "status": self._status(result), "size_bytes": result.size.size_bytes,
                "fp32_size_bytes": result.size.fp32_size_bytes, "seconds": result.seconds,
                "per_layer": [r.to_dict() for r in result.layer_records]}

    @staticmethod
    def _run_id(model_name: str, config, table, seed: int) -> str:
        key = json.dumps({"model": model_name, "config": config.to_dict(), "seed": seed,
                          "table": None if table is None else [vars(r) for r in table]}, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    @staticmethod
    def _status(result: QuantizationResult) -> str:
        c = result.config
        calib = f", {result.calibration['n_clips']} calibration clips" if result.calibration else ""
        size = result.size
        rest = size.size_bytes - size.quantized_weight_bytes
        return (f"**{c.method} {c.bits}-bit** (group {c.group_size}) in {result.seconds:.1f} s{calib}: "
                f"{size.size_bytes / 1e6:.1f} MB, {size.compression_vs_fp32:.2f}x smaller than fp32 "
                f"(quantized layers {size.quantized_weight_bytes / 1e6:.1f} MB; embeddings, convolutions, norms and "
                f"kept layers at fp16 {rest / 1e6:.1f} MB). Weights are dequantized for this demo "
                f"(*fake quant*): same speed as fp32.")

    # ---------------------------------------------------------------- transcribe
    def transcribe_audio(self, audio_path: str | None, model_name: str, sample_name: str | None = None,
                         run_id: str | None = None):
        """Full-precision and (if a run id is given) quantized transcripts side by side.

        Returns (fp text, quantized word diff, details markdown).
        """
        try:
            audio = self._audio(audio_path)
            loaded = self.models.get(model_name)
            start = time.perf_counter()
            fp_text = transcribe(loaded, [audio])[0]
            fp_seconds = time.perf_counter() - start
            with self.lock:
                result = self.results.get(run_id or "")
            if run_id and result is None:
                raise UserError("That quantized model is no longer in memory; press Quantize again.")
            q_text, q_seconds = None, None
            if result is not None:
                start = time.perf_counter()
                q_text = transcribe(result.loaded, [audio])[0]
                q_seconds = time.perf_counter() - start
        except UserError as exc:
            raise gr.Error(str(exc)) from exc
        seconds = len(audio) / SAMPLE_RATE
        reference = self._reference(audio_path, sample_name)
        lines = [f"**{seconds:.1f} s** of audio. Full precision: {fp_seconds:.2f} s (real-time factor "
                 f"{fp_seconds / seconds:.3f})"]
        if q_seconds is not None:
            lines.append(f"Quantized (fake quant): {q_seconds:.2f} s (real-time factor {q_seconds / seconds:.3f})")
        if reference is not None:
            wer_fp, _ = self.scorer.score([reference], [fp_text])
            lines.append(f"Reference: *{reference}*  \nWER full precision: **{100 * wer_fp:.1f}%**")
            if q_text is not None:
                lines[-1] += f", quantized: **{100 * self.scorer.score([reference], [q_text])[0]:.1f}%**"
        # HighlightedText joins tokens as given: keep the spaces between words.
        diff = [(word + " ", tag) for word, tag in word_diff(fp_text, q_text)] if q_text is not None else []
        return fp_text, diff, "  \n".join(lines)
