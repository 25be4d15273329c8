"""Measured latency on a real runtime: what a quantized model costs where people deploy it.

Our torch models run quantized weights as dequantized floats (fake quant), so their time says nothing
about low-bit speed. A real runtime runs the codes: whisper.cpp for any integer grid ggml's blocks carry,
CTranslate2 for 8-bit per-channel symmetric weights. Each one that can run the model is timed on the same
clips (after one warm-up clip) and the fastest is reported with its name.

A runtime's speed is a property of its file format (whisper.cpp q4_1, CTranslate2 int8) and thread count,
not of which codes a method chose, so a caller may keep the timings it has measured (``timed``) and reuse
them for the next model of the same base model and format: a server times each format once, not every run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.deploy.ct2_export import int8_rows
from engine.deploy.ggml_blocks import check_exportable
from engine.deploy.runtimes import ModelToRun, default_label, open_runtime
from engine.errors import UserError
from engine.speech.audio import SAMPLE_RATE
from engine.whisper.models import REGISTRY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeLatency:
    runtime: str  # e.g. "whisper.cpp q4_1, 2 threads"
    rtf: float  # decoding seconds per second of audio
    clips: int

    def to_dict(self) -> dict:
        return asdict(self)


def _every_weight_passes(check, model: ModelToRun) -> bool:
    """Whether check(name, weight) accepts every quantized weight (it raises UserError on one it cannot take)."""
    try:
        for name, qt in model.weights.items():
            check(name, qt)
    except UserError:
        return False
    return True


def _whisper_cpp_can_run(model: ModelToRun) -> bool:
    return _every_weight_passes(check_exportable, model)


def _ctranslate2_can_run(model: ModelToRun) -> bool:
    return model.base_model in REGISTRY and not model.full_precision and _every_weight_passes(int8_rows, model)


def runnable_runtimes(model: ModelToRun, among: Sequence[str] | None = None) -> list[str]:
    """The real runtimes (of among, if given) that run this model's codes as they are."""
    checks = {"whisper.cpp": _whisper_cpp_can_run, "ctranslate2": _ctranslate2_can_run}
    return [name for name, can_run in checks.items() if (among is None or name in among) and can_run(model)]


def time_runtime(runtime, audios: Sequence[np.ndarray]) -> float:
    """Real-time factor of runtime on audios, after one warm-up clip."""
    runtime.transcribe(audios[:1])
    start = time.perf_counter()
    runtime.transcribe(audios)
    return (time.perf_counter() - start) / (sum(len(a) for a in audios) / SAMPLE_RATE)


def fastest_real_runtime(model: ModelToRun, audios: Sequence[np.ndarray], threads: int, workdir: str | Path,
                         timed: dict | None = None, among: Sequence[str] | None = None,
                         whisper_cpp_file: Path | None = None) -> RuntimeLatency | None:
    """Time every real runtime (of among, if given) that can run model; None when none can (fake quant only).

    A runtime whose format was already timed for this base model on as many clips is taken from timed
    (which this call fills) without opening it. whisper_cpp_file: the model's whisper.cpp file, if the caller
    has written it already (else it is written under workdir when whisper.cpp is timed).
    """
    best = None
    for name in runnable_runtimes(model, among):
        key = (model.base_model, default_label(name, model, threads), len(audios))
        found = timed.get(key) if timed is not None else None
        if found is None:
            options = {"model_file": whisper_cpp_file} if name == "whisper.cpp" and whisper_cpp_file else {}
            try:
                runtime = open_runtime(name, model, threads=threads, workdir=Path(workdir) / name, **options)
            except UserError as exc:  # e.g. CTranslate2's fused q/k/v with only some of them in 8 bits
                log.info("%s cannot run this model: %s", name, exc)
                continue
            found = RuntimeLatency(runtime.label, time_runtime(runtime, audios), len(audios))
            log.info("%s: RTF %.3f on %d clips", found.runtime, found.rtf, found.clips)
            if timed is not None:
                timed[key] = found
        if best is None or found.rtf < best.rtf:
            best = found
    return best
