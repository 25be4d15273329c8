"""The tasks the worker process runs for the web app (see engine/jobs.py). Each returns plain JSON data.

quantize: quantize with the page's settings (calibration from sample_audio drawn by seed), save the result
as an artifact folder named by its run id, score it on the demo clips, and describe it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from engine.artifacts import ArtifactError, save_quantized, verify_artifact
from engine.evaluate import Utterance, evaluate
from engine.experiment import build_calibration, calibration_clips
from engine.jobs import ProgressFn, task
from engine.layer_table import apply_overrides, build_table
from engine.methods import get_method, make_config
from engine.model_cache import ModelCache
from engine.models import load_model
from engine.quantize import quantize
from engine.samples import SAMPLE_DIR, sample_clips

log = logging.getLogger(__name__)

APP_CALIBRATION_CLIPS = 16  # fewer than the benchmarks' 32: a quantization on the page takes seconds, not a minute


def run_id_of(request: dict) -> str:
    """A stable id for the same model, method settings, layer overrides and seed."""
    key = json.dumps({k: request.get(k) for k in ("model", "method", "settings", "overrides", "seed")}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def layers_key(overrides: list[dict] | None) -> str:
    """'' for the preset table, else a short name for the edited rows (runs differing only by seed share it)."""
    if not overrides:
        return ""
    digest = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:6]
    return f"{len(overrides)} edited rows #{digest}"


def demo_utterances() -> list[Utterance]:
    return [Utterance(c.name, c.path, c.transcript) for c in sample_clips() if c.group == "demo"]


def _models(context: dict, safe_only: bool = False) -> ModelCache:
    """The worker's model cache; a public server's worker reads safetensors only (see engine/policy.py)."""
    key = f"models-safe-{safe_only}"
    if key not in context:
        context[key] = ModelCache(capacity=2, loader=lambda name: load_model(name, safe_only=safe_only))
    return context[key]


def _fp32_demo(context: dict, model: str, safe_only: bool = False):
    """The full-precision model's report on the demo clips (computed once per worker)."""
    cache = context.setdefault("fp32_demo", {})
    if model not in cache:
        cache[model] = evaluate(_models(context, safe_only).get(model), demo_utterances())
    return cache[model]


@task("quantize")
def quantize_task(request: dict, progress: ProgressFn, context: dict) -> dict:
    """request: model, method, settings (method config fields), seed, overrides (list or None), artifact_root."""
    run_id = run_id_of(request)
    folder = Path(request["artifact_root"]) / run_id
    if folder.is_dir():
        try:
            summary = verify_artifact(folder)["app_summary"]
            os.utime(folder)  # recently used: the last to be pruned
            return summary
        except (ArtifactError, KeyError):
            log.warning("saved result %s is damaged or foreign; quantizing again", folder)
            shutil.rmtree(folder, ignore_errors=True)
    loaded = _models(context, request.get("safe_only", False)).get(request["model"])
    config = make_config(request["method"], **request.get("settings", {}))
    table = None
    if request.get("overrides"):
        table = apply_overrides(build_table(loaded.model, config.bits, config.group_size), request["overrides"])
    calibration = None
    if get_method(config.method).uses_calibration(config):
        progress(0.0, "preparing calibration audio")
        clips = calibration_clips(SAMPLE_DIR, APP_CALIBRATION_CLIPS, int(request.get("seed", 0)))
        calibration = build_calibration(loaded, clips)
    result = quantize(loaded, config, calibration, layers=table, progress=lambda f, m: progress(0.9 * f, m))
    progress(0.92, "scoring on the demo clips")
    report = evaluate(result.loaded, demo_utterances())
    fp32 = _fp32_demo(context, request["model"], request.get("safe_only", False))
    summary = {
        "run_id": run_id, "artifact": str(folder), "model": request["model"], "method": config.method,
        "bits": config.bits, "group_size": config.group_size, "seed": int(request.get("seed", 0)),
        "config": config.to_dict(), "overrides": request.get("overrides"),
        "layers_key": layers_key(request.get("overrides")),
        "calibration_clips": calibration.n_clips if calibration is not None else 0,
        "size": result.size.to_dict(), "seconds": result.seconds, "fake_quant": result.fake_quant,
        "demo_wer": report.wer, "demo_wer_fp32": fp32.wer, "demo_rtf": report.rtf, "demo_rtf_fp32": fp32.rtf,
        "layer_records": [r.to_dict() for r in result.layer_records],
    }
    progress(0.97, "saving the quantized model")
    save_quantized(result, folder, extra={"app_summary": summary})
    return summary


@task("personalize")
def personalize_task(request: dict, progress: ProgressFn, context: dict) -> dict:
    """request: model, speaker, audio (paths), texts, n_train, adapters_root (optional). Trains LoRA on NF4
    with the first n_train recordings, scores fp32 / NF4 / NF4+LoRA on the rest, saves the adapter."""
    from engine.audio import load_audio
    from engine.config import NF4Config
    from engine.personalize import PersonalizeError, before_after, check_speaker, personalize, save_adapter

    speaker = check_speaker(request["speaker"])
    paths, texts, n_train = request["audio"], request["texts"], int(request["n_train"])
    if len(paths) != len(texts) or not 0 < n_train < len(paths):
        raise PersonalizeError(f"Record at least {n_train + 1} prompts: {n_train} to learn from and one to test on.")
    audios = [load_audio(p, request.get("max_audio_seconds"), request.get("max_bytes")) for p in paths]
    fp32 = _models(context, request.get("safe_only", False)).get(request["model"])
    progress(0.02, "quantizing to NF4")
    base = quantize(fp32, NF4Config()).loaded
    base_info = {"name": request["model"], "quant_config": NF4Config().to_dict()}
    adapter = personalize(base, speaker, audios[:n_train], texts[:n_train], base_info=base_info,
                          progress=lambda f, m: progress(0.05 + 0.8 * f, m))
    adapter.clips = [f"prompt {i + 1}" for i in range(n_train)]
    folder = save_adapter(adapter, request.get("adapters_root"))
    progress(0.9, "comparing before and after on the held-out prompts")
    return {"speaker": speaker, "adapter": str(folder), "train_clips": n_train, "test_clips": len(texts) - n_train,
            "trainable_parameters": adapter.trainable_parameters, "extra_fraction": adapter.extra_fraction,
            "train_seconds": adapter.seconds, "losses": adapter.losses,
            **before_after(fp32, base, adapter, audios[n_train:], texts[n_train:])}
