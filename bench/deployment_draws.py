"""Calibration draws of the deployment table's target rows: is a difference to whisper.cpp's own rounding the
method's or the one calibration draw's?

bench/results/deployment.md calibrates GPTQ and FADE on one draw (seed 0) of 32 real clips. This runs the rows
that carry issue 15's targets (FADE in q4_1, q4_0 and q5_1, defaults and the alternative settings) for several
draws, with the references they are compared against (whisper.cpp f16, its own q4_0 and q4_1) scored in the
same run, all in whisper.cpp (the pywhispercpp wheel), 50 test-other clips, greedy, full encoder window. The
targets are then judged on the mean over draws, with a 95% interval resampling clips and draws together.

    python -m bench.deployment_draws [--seeds 5] [--limit N] [--threads 2]

Resumable: draws already in bench/results/deployment-draws.json are kept (delete it to start over).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from bench.common import RESULTS, cpu, speech, speech_clips, write_results
from bench.deployment import OURS, TARGETS
from bench.methods import N_CALIB, REAL_CALIBRATION
from engine.deploy.ggml_lib import Q4_0, Q4_1
from engine.deploy.runtimes import ModelToRun, WhisperCppRuntime
from engine.deploy.whisper_cpp_export import export_whisper_cpp
from engine.quant.quantize import quantize
from engine.quant.registry import make_config
from engine.speech.evaluate import TextScorer
from engine.speech.intervals import paired_delta, wer_interval
from engine.whisper.models import load_model
from engine.workflows.experiment import build_calibration, calibration_clips

log = logging.getLogger("bench.deployment_draws")

NAME = "deployment-draws"
EVAL_FOLDERS = ("librispeech-test-other",)
REFERENCES = {"whisper.cpp f16": None, "whisper.cpp's own q4_0 (round-to-nearest)": Q4_0,
              "whisper.cpp's own q4_1 (round-to-nearest)": Q4_1}
DRAWN = tuple(ours for ours, _, _ in TARGETS)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5, help="calibration draws 0..N-1 for every target row")
    parser.add_argument("--limit", type=int, default=0, help="only the first N clips (a quick check)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--note", default=None, help="a sentence about this run for the markdown (kept in the JSON)")
    args = parser.parse_args(argv)
    clips = speech_clips(EVAL_FOLDERS)
    utterances, audios = clips.utterances, clips.audios
    if args.limit:
        utterances, audios = utterances[: args.limit], audios[: args.limit]
    out_json = RESULTS / f"{NAME}.json"
    data = json.loads(out_json.read_text()) if out_json.exists() else {}
    references, draws = data.get("references", {}), data.get("draws", {})
    note = args.note if args.note is not None else data.get("note", "")  # a resumed run keeps its note
    scorer = TextScorer()
    loaded = load_model("tiny.en")
    workdir = Path(tempfile.mkdtemp(prefix="asrq-draws-"))
    settings = {f"ours: {label}": (method, kw) for label, method, kw in OURS}

    def score(model_file: Path, container: str) -> dict:
        texts = WhisperCppRuntime(model_file, args.threads, container).transcribe(audios)
        errors, words = scorer.error_counts([u.reference for u in utterances], texts)
        return {"wer": sum(errors) / sum(words), "errors": errors, "words": words}

    def save() -> None:
        write_results(NAME, {"references": references, "draws": draws, "clips": len(utterances),
                             "threads": args.threads, "calibrated_on": list(REAL_CALIBRATION), "n_calib": N_CALIB,
                             "note": note},
                      markdown(references, draws, len(utterances), note))

    for label, kind in REFERENCES.items():
        if label not in references:
            report = export_whisper_cpp(loaded, {}, workdir / "reference.bin", container=kind)
            references[label] = score(report.path, report.container)
            log.info("%s: WER %.2f%%", label, 100 * references[label]["wer"])
            save()
    for seed in range(args.seeds):  # one calibration per draw, shared by its rows
        missing = [name for name in DRAWN if str(seed) not in draws.get(name, {})]
        if not missing:
            continue
        calibration = build_calibration(loaded, calibration_clips([speech(f) for f in REAL_CALIBRATION], N_CALIB,
                                                                  seed, utterances))
        for name in missing:
            method, kw = settings[name]
            result = quantize(loaded, make_config(method, group_size=32, **kw), calibration)
            report = ModelToRun.from_result(result, "tiny.en").write_whisper_cpp(workdir / "ours.bin")
            draws.setdefault(name, {})[str(seed)] = {**score(report.path, report.container),
                                                     "container": report.container,
                                                     "quantization_seconds": result.seconds}
            log.info("%s seed %d: WER %.2f%%", name, seed, 100 * draws[name][str(seed)]["wer"])
            save()
        del calibration
    if args.note is not None:  # a new note when nothing was missing; otherwise saved per draw, so the CPU
        save()  # line keeps naming the machine that ran the last draw
    return {"references": references, "draws": draws}


def markdown(references: dict, draws: dict, n_clips: int, note: str = "") -> str:
    processor = cpu()
    lines = [f"# Deployment targets over calibration draws: tiny.en in whisper.cpp, {n_clips} test-other clips",
             "", f"CPU: {processor.get('model', '?')}. Calibration: {N_CALIB} real clips outside test-other, one "
             "draw per seed; our codes exported as they are (group 32), the token embedding by ggml's own "
             "rounding; whisper.cpp (pywhispercpp wheel), greedy, full encoder window." + (f" {note}" if note else ""), "",
             "| system | WER % per draw (seed 0, 1, ...) | mean ± std | 95% interval (clips) |",
             "| --- | --- | ---: | --- |"]
    for label, row in references.items():
        low, high = wer_interval(row["errors"], row["words"]).to_list()
        lines.append(f"| {label} | {100 * row['wer']:.2f} (no calibration) | {100 * row['wer']:.2f} | "
                     f"{100 * low:.1f} to {100 * high:.1f} |")
    for name, by_seed in draws.items():
        wers = [100 * by_seed[s]["wer"] for s in sorted(by_seed, key=int)]
        lines.append(f"| {name} | {' '.join(f'{w:.2f}' for w in wers)} | {np.mean(wers):.2f} ± "
                     f"{np.std(wers, ddof=1) if len(wers) > 1 else 0:.2f} | - |")
    lines += ["", "## The issue's targets over the draws", "",
              "| ours | against | draws | mean difference, points | 95% interval (clips and draws) | "
              "per draw | target | met by the mean | met by every draw |",
              "| --- | --- | ---: | ---: | --- | --- | ---: | --- | --- |"]
    for ours, theirs, goal in TARGETS:
        if ours not in draws or theirs not in references:
            continue
        ref = references[theirs]
        runs = [draws[ours][s]["errors"] for s in sorted(draws[ours], key=int)]
        delta, ci = paired_delta(runs, ref["errors"], ref["words"])
        each = [100 * paired_delta([run], ref["errors"], ref["words"])[0] for run in runs]
        lines.append(f"| {ours} | {theirs} | {len(runs)} | {100 * delta:+.2f} | {100 * ci.low:+.1f} to "
                     f"{100 * ci.high:+.1f} | {' '.join(f'{d:+.1f}' for d in each)} | <= {goal:+.1f} | "
                     f"{'yes' if 100 * delta <= goal else 'no'} | {'yes' if max(each) <= goal else 'no'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
