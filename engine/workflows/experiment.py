"""Quantize-and-evaluate runs as the CLI, the benchmarks and the app use them: calibration drawn by seed,
never overlapping the evaluation clips; several seeds give a mean and standard deviation."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.errors import DatasetError
from engine.progress import ProgressFn
from engine.quant.calibration import CalibrationData, prepare_calibration
from engine.quant.precision import PassPrecision
from engine.quant.config import QuantConfig
from engine.quant.layer_table import LayerSpec
from engine.quant.quantize import QuantizationResult, quantize
from engine.quant.registry import get_method
from engine.quant.windows import RECORDINGS_PER_WINDOW
from engine.speech.audio import load_audio
from engine.speech.evaluate import EvalReport, Utterance, evaluate, load_dataset, mean_std, split_calibration
from engine.speech.intervals import describe_delta, paired_delta, wer_interval
from engine.whisper.models import LoadedModel

log = logging.getLogger(__name__)


def calibration_clips(folders: str | Path | Sequence[str | Path], n_clips: int, seed: int,
                      exclude: Sequence[Utterance] = ()) -> list[Utterance]:
    """n_clips utterances of one or more folders drawn by seed, leaving out any clip that is also evaluated."""
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    banned = {u.path.resolve() for u in exclude}
    pool = [u for folder in folders for u in load_dataset(folder) if u.path.resolve() not in banned]
    if len(pool) < n_clips:
        names = ", ".join(map(str, folders))
        raise DatasetError(f"{names} has {len(pool)} clips outside the evaluation set; {n_clips} are needed for calibration.")
    chosen, _ = split_calibration(pool, n_clips, seed)
    return chosen


def build_calibration(loaded: LoadedModel, clips: Sequence[Utterance],
                      per_window: int = RECORDINGS_PER_WINDOW) -> CalibrationData:
    """Teacher-forced with the clips' own transcripts; the speakers make FADE's held-out halves disjoint;
    per_window clips of one half share a 30 s encoder window (engine/quant/windows.py)."""
    return prepare_calibration(loaded, [load_audio(u.path) for u in clips], [u.reference for u in clips],
                               [u.speaker for u in clips], per_window)


def calibration_for(loaded: LoadedModel, config: QuantConfig, folders: str | Path | Sequence[str | Path] | None,
                    n_clips: int, seed: int, exclude: Sequence[Utterance] = (),
                    per_window: int = RECORDINGS_PER_WINDOW) -> CalibrationData | None:
    """The calibration pass input for config's method drawn by seed (None when the method needs none)."""
    if not get_method(config.method).needs_calibration(config):
        return None
    if folders is None:
        raise DatasetError(f"Method '{config.method}' needs calibration audio (--calib DIR).")
    return build_calibration(loaded, calibration_clips(folders, n_clips, seed, exclude), per_window)


@dataclass(frozen=True)
class SeedRun:
    seed: int | None
    result: QuantizationResult
    report: EvalReport


def quantize_and_evaluate(
    loaded: LoadedModel,
    config: QuantConfig,
    data: Sequence[Utterance],
    calib_folder: str | Path | None,
    seeds: Sequence[int] = (0,),
    n_calib: int = 32,
    layers: list[LayerSpec] | None = None,
    progress: ProgressFn | None = None,
    fallback: bool = False,
    precision: PassPrecision | None = None,
    per_window: int = RECORDINGS_PER_WINDOW,
) -> list[SeedRun]:
    """One quantization + evaluation per calibration seed (one run only when the method needs no data).

    fallback: score with Whisper's temperature fallback decoding instead of greedy (engine/speech/transcribe.py).
    precision: the calibration pass's dtypes (None: auto, see engine/quant/precision.pass_precision)."""
    needs = get_method(config.method).needs_calibration(config)
    if needs and calib_folder is None:
        raise DatasetError(f"Method '{config.method}' needs calibration audio (--calib DIR).")
    runs = []
    for seed in seeds if needs else [None]:
        calibration = calibration_for(loaded, config, calib_folder, n_calib, seed, data, per_window) if needs else None
        start = time.perf_counter()
        result = quantize(loaded, config, calibration, layers=layers, progress=progress, precision=precision)
        if calibration is not None:
            result.calibration.update({"folder": str(calib_folder), "seed": seed})
        report = evaluate(result.loaded, data, fallback=fallback)
        log.info("%s seed %s: WER %.2f%% (%.0f s)", config.method, seed, 100 * report.wer, time.perf_counter() - start)
        runs.append(SeedRun(seed, result, report))
    return runs


def summary(model: str, config: QuantConfig, runs: Sequence[SeedRun], per_utterance: bool = False) -> dict:
    """The JSON object of `asrq eval` for a quantized model."""
    wer_mean, wer_std = mean_std([r.report.wer for r in runs])
    cer_mean, _ = mean_std([r.report.cer for r in runs])
    first = runs[0]
    out = {
        "model": model,
        **first.result.to_dict(),  # the first seed's sizes and per-layer records
        "n_utterances": first.report.n_utterances,
        "wer": wer_mean,
        "cer": cer_mean,
        "wer_std": wer_std,
        "seeds": [r.seed for r in runs],
        "wer_per_seed": [r.report.wer for r in runs],
        "rtf": mean_std([r.report.rtf for r in runs])[0],
        "fake_quant": True,  # scored in torch on dequantized float weights: rtf is not a low-bit speed
        "quantization_seconds": mean_std([r.result.seconds for r in runs])[0],
    }
    if per_utterance:
        out["utterances"] = [vars(u) for u in first.report.utterances]
    return out


def interval_summary(reports: Sequence[EvalReport], fp32: EvalReport | None = None, seed: int = 0) -> dict:
    """wer_ci95 of the (first) run; with fp32 on the same utterances also delta_wer and delta_ci95 over the runs
    (each a calibration seed) and the utterances, and the same in words."""
    first = reports[0]
    words = [u.words for u in first.utterances]
    out = {"wer_ci95": wer_interval([u.errors for u in first.utterances], words, seed).to_list()}
    if fp32 is not None:
        if [u.id for u in fp32.utterances] != [u.id for u in first.utterances]:
            raise ValueError("the full-precision report must cover the same utterances in the same order")
        delta, ci = paired_delta([[u.errors for u in r.utterances] for r in reports],
                                 [u.errors for u in fp32.utterances], words, seed)
        out.update({"wer_fp32": fp32.wer, "delta_wer": delta, "delta_ci95": ci.to_list(),
                    "delta_words": describe_delta(delta, ci, first.n_utterances)})
    return out


def data_utterances(folder: str | Path, limit: int = 0) -> list[Utterance]:
    utterances = load_dataset(folder)
    return utterances[:limit] if limit else utterances
