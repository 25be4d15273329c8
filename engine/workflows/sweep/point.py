"""One point of a sweep: quantize (or not, for the full-precision baseline), evaluate, and return a record.

The record is plain JSON (it crosses a Ray task boundary and lands in points.jsonl): the point's settings, its
WER with a bootstrap interval, size, times, and per-clip error counts so the driver can pair it with the
model's full-precision run. Audio is read by path: a Ray cluster's workers need the data and calibration
folders at the same paths (a shared filesystem); local Ray and in-process runs share this machine's disk.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import MutableMapping
from dataclasses import asdict

import torch

from engine.errors import UserError
from engine.quant.layer_table import table_for
from engine.quant.quantize import quantize
from engine.quant.registry import make_config
from engine.quant.size import SizeReport, size_report
from engine.speech.evaluate import evaluate
from engine.speech.intervals import wer_interval
from engine.whisper.models import LoadedModel, load_model
from engine.workflows.experiment import calibration_for, data_utterances
from engine.workflows.sweep.grid import Point

log = logging.getLogger(__name__)


def _fp32_size(loaded: LoadedModel) -> SizeReport:
    """The model as loaded: every weight in float32 (size_report counts unquantized weights at fp16)."""
    report = size_report(loaded.model, {}, set())
    return SizeReport(report.fp32_size_bytes, report.fp32_size_bytes, report.fp16_size_bytes, 0)


def _quantized(loaded: LoadedModel, point: Point, utterances) -> tuple[LoadedModel, SizeReport, float, dict]:
    config = make_config(point.method, **point.settings)
    table = table_for(loaded.model, config.bits, config.group_size, config.quantize_output, point.preset,
                      point.overrides)
    calibration = calibration_for(loaded, config, point.calib, point.n_calib, point.seed, utterances)
    calib = {} if calibration is None else {"folder": point.calib, "clips": calibration.n_recordings, "seed": point.seed}
    result = quantize(loaded, config, calibration, layers=table)
    return result.loaded, result.size, result.seconds, {"config": config.to_dict(), "calibration": calib,
                                                       "fake_quant": True}  # scored in torch on float weights


def run_point(point: Point, models: MutableMapping[str, LoadedModel] | None = None) -> dict:
    """Quantize and evaluate one point on point.threads threads. A setting the method refuses, a missing clip or
    any other user error comes back as status "failed" with its sentence; other exceptions propagate (the
    runner records them too). models: a cache of loaded full-precision models (in-process runs reuse it)."""
    started = time.time()
    base = {"key": point.key, "label": point.label(), "model": point.model, "method": point.method,
            "bits": point.bits, "group_size": point.group_size, "seed": point.seed, "settings": point.settings,
            "preset": point.preset, "layers": len(point.overrides) if point.overrides else 0,
            "data": point.data, "calib": point.calib, "limit": point.limit, "n_calib": point.n_calib,
            "threads": point.threads, "host": platform.node(), "started": started}
    threads = torch.get_num_threads()
    torch.set_num_threads(point.threads)
    try:
        utterances = data_utterances(point.data, point.limit)
        models = {} if models is None else models
        if point.model not in models:
            models[point.model] = load_model(point.model)
        loaded = models[point.model]
        if point.method == "fp32":
            model, size, quant_seconds, extra = loaded, _fp32_size(loaded), 0.0, {"fake_quant": False}
        else:
            model, size, quant_seconds, extra = _quantized(loaded, point, utterances)
        eval_start = time.perf_counter()
        report = evaluate(model, utterances)
        errors = [u.errors for u in report.utterances]
        words = [u.words for u in report.utterances]
        record = {**base, **extra, "status": "ok", "error": None, "wer": report.wer, "cer": report.cer,
                  "wer_ci95": wer_interval(errors, words, point.seed).to_list(), "n_utterances": report.n_utterances,
                  "size_bytes": size.size_bytes, "fp32_size_bytes": size.fp32_size_bytes, "size": asdict(size),
                  "quant_seconds": quant_seconds, "eval_seconds": time.perf_counter() - eval_start, "rtf": report.rtf,
                  "utterance_ids": [u.id for u in report.utterances], "errors": errors, "words": words,
                  "hypotheses": [u.hypothesis for u in report.utterances]}
    except UserError as exc:
        log.warning("%s failed: %s", point.label(), exc)
        record = {**base, "status": "failed", "error": str(exc)}
    finally:
        torch.set_num_threads(threads)
    record["finished"] = time.time()
    return record


class PointWorker:
    """Runs points one after another, keeping every model it loaded: a Ray actor of this class saves a model
    load per point (a plain task would start from nothing each time)."""

    def __init__(self) -> None:
        self.models: dict[str, LoadedModel] = {}

    def run(self, point: Point) -> dict:
        return run_point(point, self.models)
