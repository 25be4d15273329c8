"""The tasks the worker process runs for the web app (serving/worker.py), by name in TASKS. Each is a function
of (request: dict, progress, context) -> dict of plain JSON data; context lives as long as the worker process.

quantize: quantize with the page's settings (calibration from sample_audio drawn by seed, never a clip that is
scored), save the result as an artifact folder named by its run id, score it on the page's evaluation set
(the demo clips, or a folder of real recordings: engine/samples.eval_set) against full precision with
bootstrap intervals, time it on the fastest real runtime that runs its format (engine/deploy/latency.py), and
describe it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from engine.deploy.latency import fastest_real_runtime, runnable_runtimes
from engine.deploy.runtimes import ModelToRun
from engine.progress import ProgressFn
from engine.quant.artifacts import save_quantized
from engine.quant.layer_table import apply_overrides, build_table
from engine.quant.quantize import quantize
from engine.quant.registry import make_config
from engine.speech.audio import SAMPLE_RATE, load_audio
from engine.speech.evaluate import evaluate
from engine.speech.samples import SAMPLE_DIR, EvalSet, eval_set
from engine.whisper.models import load_model
from engine.workflows.experiment import calibration_for, interval_summary
from serving.model_cache import ModelCache
from serving.results import saved_summary
from serving.transcription import audio_key

log = logging.getLogger(__name__)

# Saved results of an older version are not reused: version 2 calibrates on two voices (stratified, never on a
# scored clip) and stores intervals; version 3 adds the latency on a real runtime; version 4 fits asymmetric
# grids from each group's float minimum; version 5 packs calibration clips 4 to an encoder window; version 6
# fits symmetric grids by ggml's q4_0 rule (engine/quant/formats.py: signed_grid); version 7 caps FADE's alpha at
# 0.5 for layers of 3 bits or fewer (engine/quant/methods/fade.py: fade_alpha_max), version 8 at 4 bits too.
RESULTS_VERSION = 8
APP_CALIBRATION_CLIPS = 16  # fewer than the benchmarks' 32: a quantization on the page takes seconds, not a minute
LATENCY_CLIPS = 3  # scored clips timed on the real runtime (after a warm-up on the first)
WHISPER_CPP_FILE = "model-whisper.cpp.bin"  # in the run's artifact folder: the page's download
# Full precision is timed on CTranslate2 float32 (faster-whisper's runtime), the fastest real one for it here
# (bench/results/deployment.md: whisper.cpp f16 took 2.8x its time), instead of opening every runtime.
FP32_RUNTIMES = ("ctranslate2",)


def run_id_of(request: dict) -> str:
    """A stable id for the same model, method settings, layer overrides, seed (and evaluation folder, if any)."""
    fields = ("model", "method", "settings", "overrides", "seed") + (("eval_dir",) if request.get("eval_dir") else ())
    key = json.dumps({"version": RESULTS_VERSION, **{k: request.get(k) for k in fields}}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def layers_key(overrides: list[dict] | None) -> str:
    """'' for the preset table, else a short name for the edited rows (runs differing only by seed share it)."""
    if not overrides:
        return ""
    digest = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:6]
    return f"{len(overrides)} edited rows #{digest}"


def _models(context: dict, safe_only: bool = False) -> ModelCache:
    """The worker's model cache; a public server's worker reads safetensors only (see serving/policy.py)."""
    key = f"models-safe-{safe_only}"
    if key not in context:
        context[key] = ModelCache(capacity=2, loader=lambda name: load_model(name, safe_only=safe_only))
    return context[key]


def _real_latency(context: dict, model: ModelToRun, clips: EvalSet, workdir: Path,
                  among: tuple[str, ...] | None = None, whisper_cpp_file: Path | None = None) -> dict | None:
    """The fastest real runtime's latency on the first scored clips; each format is timed once per worker (see
    engine/deploy/latency.py). The runtimes' model files stay in workdir."""
    audios = [load_audio(u.path) for u in clips.utterances[:LATENCY_CLIPS]]
    found = fastest_real_runtime(model, audios, torch.get_num_threads(), workdir,
                                 timed=context.setdefault("real_latency", {}), among=among,
                                 whisper_cpp_file=whisper_cpp_file)
    return found.to_dict() if found else None


def _fp32_report(context: dict, model: str, clips: EvalSet, safe_only: bool = False):
    """The full-precision model's report on an evaluation set (computed once per worker)."""
    cache = context.setdefault("fp32_reports", {})
    key = (model, clips.folder)
    if key not in cache:
        cache[key] = evaluate(_models(context, safe_only).get(model), clips.utterances)
    return cache[key]


def quantize_task(request: dict, progress: ProgressFn, context: dict) -> dict:
    """request: model, method, settings (method config fields), seed, overrides (list or None), artifact_root."""
    run_id = run_id_of(request)
    folder = Path(request["artifact_root"]) / run_id
    saved = saved_summary(folder)  # the server answers these itself; this one was saved while the job waited
    if saved is not None:
        return saved
    if folder.is_dir():
        log.warning("saved result %s is damaged, foreign or of an older version; quantizing again", folder)
        shutil.rmtree(folder, ignore_errors=True)
    loaded = _models(context, request.get("safe_only", False)).get(request["model"])
    config = make_config(request["method"], **request.get("settings", {}))
    table = None
    if request.get("overrides"):
        table = apply_overrides(build_table(loaded.model, config.bits, config.group_size,
                                            with_output=config.quantize_output), request["overrides"])
    scored = eval_set(request.get("eval_dir"))
    progress(0.0, "preparing calibration audio")
    # Never calibrate on a clip that is scored: the WER would flatter the method.
    calibration = calibration_for(loaded, config, SAMPLE_DIR, APP_CALIBRATION_CLIPS, int(request.get("seed", 0)),
                                  scored.utterances)
    result = quantize(loaded, config, calibration, layers=table, progress=lambda f, m: progress(0.9 * f, m))
    progress(0.92, f"scoring on {scored.description}")
    report = evaluate(result.loaded, scored.utterances)
    fp32 = _fp32_report(context, request["model"], scored, request.get("safe_only", False))
    progress(0.94, "timing on a real runtime")
    runnable = ModelToRun.from_result(result, request["model"])
    fp32_model = ModelToRun(_models(context, request.get("safe_only", False)).get(request["model"]),
                            base_model=request["model"])
    workdir = Path(tempfile.mkdtemp(prefix="asrq-latency-"))
    try:
        # The page's download, when whisper.cpp can carry the codes; the timing (if any) runs on this file.
        download = (runnable.write_whisper_cpp(workdir / WHISPER_CPP_FILE).path
                    if runnable_runtimes(runnable, ("whisper.cpp",)) else None)
        real = _real_latency(context, runnable, scored, workdir / "quantized", whisper_cpp_file=download)
        real_fp32 = _real_latency(context, fp32_model, scored, workdir / "fp32", FP32_RUNTIMES)
        summary = _summary(request, run_id, folder, config, calibration, result, scored, report, fp32, real, real_fp32)
        summary["whisper_cpp_file"] = WHISPER_CPP_FILE if download else None
        summary["transcripts"] = _transcripts(scored, report)
        progress(0.97, "saving the quantized model")
        save_quantized(result, folder, extra={"app_summary": summary})
        if download:
            shutil.move(download, folder / WHISPER_CPP_FILE)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return summary


def _summary(request, run_id, folder, config, calibration, result, scored, report, fp32, real, real_fp32) -> dict:
    return {
        **result.to_dict(), "run_id": run_id, "artifact": str(folder), "model": request["model"],
        "seed": int(request.get("seed", 0)), "overrides": request.get("overrides"),
        "layers_key": layers_key(request.get("overrides")),
        "calibration_clips": calibration.n_recordings if calibration is not None else 0,
        # demo_* keep their names (the history's columns) but hold the scores on the evaluation set named here.
        "eval_set": scored.description, "eval_clips": report.n_utterances, **interval_summary([report], fp32),
        "demo_wer": report.wer, "demo_wer_fp32": fp32.wer, "demo_rtf": report.rtf, "demo_rtf_fp32": fp32.rtf,
        # None when no real runtime runs this format: the page then says "fake quant" instead of a time.
        "real_latency": real, "real_latency_fp32": real_fp32,
    }


def _transcripts(scored: EvalSet, report) -> dict[str, dict]:
    """The quantized model's transcript of each scored clip, keyed by the digest a server keys that clip's audio
    by (serving/transcription.py): a room clicking the demo clips with this run is answered without running it.
    Seconds: the clip's share of the scoring's decoding time."""
    answers = {}
    for utterance, result in zip(scored.utterances, report.utterances):
        audio = load_audio(utterance.path)
        answers[audio_key(audio)] = {"text": result.hypothesis, "seconds": report.rtf * len(audio) / SAMPLE_RATE}
    return answers


def personalize_task(request: dict, progress: ProgressFn, context: dict) -> dict:
    """request: model, speaker, audio (paths), texts, n_train, adapters_root (optional). LoRA on NF4 from the
    first n_train recordings (the last of them validating), fp32 / NF4 / NF4+LoRA on the rest."""
    from engine.workflows.personalize import adapt_and_compare, check_speaker

    speaker = check_speaker(request["speaker"])
    audios = [load_audio(p, request.get("max_audio_seconds"), request.get("max_bytes")) for p in request["audio"]]
    fp32 = _models(context, request.get("safe_only", False)).get(request["model"])
    return adapt_and_compare(fp32, speaker, audios, list(request["texts"]), int(request["n_train"]),
                             adapters_root=request.get("adapters_root"), progress=progress)


TASKS = {"quantize": quantize_task, "personalize": personalize_task}
# Tasks whose result is decided by the request alone: equal keys share one job (serving/job_queue.py).
RESULT_KEYS = {"quantize": run_id_of}
