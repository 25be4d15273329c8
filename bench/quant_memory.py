"""Quantization time and peak memory per method, each in its own fresh process (nothing else resident):
the process loads tiny.en, decodes 32 real calibration clips and quantizes once; its peak RSS is the
kernel's VmHWM at the end. With --wer each run also scores its model on the 50 test-other clips, so a
faster pass (--pad-strides: how many encoder padding frames one sampled frame stands for in the moments;
1 = all of them) is compared on accuracy over calibration seeds as well as on time, in one run.

    python -m bench.quant_memory [--methods fade gptq qep rtn] [--bits 4 3]
    python -m bench.quant_memory --methods fade --bits 4 --pad-strides 1 8 --seeds 0 1 2 --wer --out pass_speed \
        --baseline ../base   # a checkout of an earlier commit (same child interface), timed in turn with these rows
    python -m bench.quant_memory --methods fade --bits 4 --pad-strides 1 --per-window 4 --seeds 0 1 2 3 4 \
        --out pass_speed_same_codes --baseline ../base   # the codes column: equal digests, the same model bit for bit
    python -m bench.quant_memory --methods fade --bits 4 --pad-strides 1 --seeds 0 1 --threads 1 --out pass_memory_1thread \
        --baseline ../base   # one thread per process, as the page's job worker runs
    python -m bench.quant_memory --methods fade --bits 4 --pad-strides 1 --precisions float32 bfloat16 bfloat16-forward \
        --seeds 0 1 2 3 --wer --out pass_precision   # the pass's dtypes (engine/quant/precision.py)
    python -m bench.quant_memory --models base small --methods fp32 fade --bits 4 --pad-strides 1 --wer \
        --out bigger_models  # the optional extras (pip install '.[base,small]'); fp32: load and score only
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from bench.common import commit_of, write_results
from engine.quant.calibration import PAD_STRIDE
from engine.quant.windows import RECORDINGS_PER_WINDOW

TEST_SET = "librispeech-test-other"


def child(method: str, bits: int, pad_stride: int, seed: int, wer: bool, model: str = "tiny.en",
          precision: str | None = None, per_window: int = RECORDINGS_PER_WINDOW) -> dict:
    from bench.common import speech
    from bench.methods import N_CALIB, REAL_CALIBRATION, peak_rss_mb
    from engine.quant.quantize import quantize
    from engine.quant.registry import make_config
    from engine.speech.evaluate import evaluate, load_dataset
    from engine.whisper.models import load_model
    from engine.workflows.experiment import calibration_for

    if importlib.util.find_spec("engine.quant.methods.gptq_kernels"):  # (a checkout before stop 40 has none)
        # The compiled GPTQ loop loads with the process (~0.6 s), as in the page's job worker: not part of a pass.
        importlib.import_module("engine.quant.methods.gptq_kernels")

    start = time.perf_counter()
    loaded = load_model(model)
    test_set = load_dataset(speech(TEST_SET))
    row = {"model": model, "method": method, "bits": bits, "pad_stride": pad_stride, "seed": seed}
    if method == "fp32":  # the model as loaded: its memory and its own WER, the reference of the rows beside it
        row.update(quant_seconds=0.0, process_seconds=time.perf_counter() - start, peak_rss_mb=peak_rss_mb())
        if wer:
            row["wer"] = evaluate(loaded, test_set).wer
        return row
    config = make_config(method, bits=bits, group_size=64)
    # (a baseline checkout runs its own child, so this one always knows per_window)
    calibration = calibration_for(loaded, config, [speech(n) for n in REAL_CALIBRATION], N_CALIB, seed, test_set,
                                  per_window)
    row["per_window"] = per_window
    row["windows"] = calibration.n_clips if calibration is not None else 0
    if precision is None:  # what the checkout does by default (an earlier commit has no precision to choose)
        result = quantize(loaded, config, calibration, pad_stride=pad_stride)
    else:
        from engine.quant.precision import pass_precision

        result = quantize(loaded, config, calibration, pad_stride=pad_stride, precision=pass_precision(precision))
    row["precision"] = result.calibration.get("pass_precision", "float32")
    row.update(quant_seconds=result.seconds, process_seconds=time.perf_counter() - start, peak_rss_mb=peak_rss_mb(),
               codes_sha256=codes_digest(result.tensors))
    if wer:  # after the peak is read: the score is not part of the quantization's memory
        from bench.common import test_other_clips, token_kl

        row["wer"] = evaluate(result.loaded, test_set).wer
        row["token_kl"] = token_kl(loaded, result.loaded, test_other_clips())
    return row


CODE_FIELDS = ("codes", "scale", "zero", "scales", "levels")  # what a layer ships: its codes and their grid


def codes_digest(tensors: dict) -> str:
    """The first 16 hex digits of a SHA-256 over every quantized layer's codes and grid, in name order: equal
    digests mean two passes produced the same model, bit for bit."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        for field in CODE_FIELDS:
            value = getattr(tensors[name], field, None)
            if isinstance(value, torch.Tensor):
                digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def markdown(rows: list[dict], with_wer: bool, skipped: list[dict] = ()) -> str:
    threads = sorted({r["threads"] for r in rows if "threads" in r})
    lines = ["# Quantization time and peak memory, 32 real calibration clips, group size 64", "",
             "Each row is a fresh process: model + calibration audio + the pass (fp32: the model loaded, no pass)"
             + (f", {' or '.join(map(str, threads))} torch thread(s)." if threads else "."),
             "pad stride: one encoder padding frame in this many enters the moments (1: all of them).",
             "per window: calibration clips (of one half) sharing a 30 s encoder window (engine/quant/windows.py;"
             " 1: one clip per window, as before stop 32); windows: how many the pass encoded.",
             "precision: the pass's dtypes (float32; bfloat16-forward: both streams' forwards in bfloat16, moments"
             " float32 sums of exact products (since stop 31 those of bfloat16 inputs from bfloat16 copies,"
             " 3x faster); bfloat16: also the drift's moment products, H^ float32; engine/quant/precision.py).",
             "token KL: mean KL(fp32 || quantized) per token, both teacher-forced on the 50 clips' reference"
             " transcripts (bench/common.token_kl): a smooth fidelity measure beside the WER's jumps.", ""]
    with_codes = any("codes_sha256" in r for r in rows)
    if with_codes:
        lines += ["codes: the first 16 hex digits of a SHA-256 over every layer's codes and grid (equal: the same"
                  " model bit for bit).", ""]
    head = "| model | method | bits | pad stride | per window | windows | precision | seed | quantize s | process peak RSS MB |"
    lines += [head + (" codes |" if with_codes else "") + (" WER % (50 test-other clips) | token KL to fp32, 10^-3 nats |" if with_wer else ""),
              "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |" + (" --- |" if with_codes else "")
              + (" ---: | ---: |" if with_wer else "")]
    for r in rows:
        line = (f"| {r.get('model', 'tiny.en')} | {r['method']} | {r['bits']} | {r['pad_stride']} "
                f"| {r.get('per_window', 1)} | {r.get('windows', '-')} "
                f"| {r.get('precision', 'float32')} | {r['seed']} "
                f"| {r['quant_seconds']:.1f} | {r['peak_rss_mb']:.0f} |" + (f" {r.get('codes_sha256', '-')} |" if with_codes else ""))
        kl = f" {1000 * r['token_kl']:.2f} |" if "token_kl" in r else " - |"
        lines.append(line + (f" {100 * r['wer']:.2f} |{kl}" if with_wer and "wer" in r else " | |" if with_wer else ""))
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r.get("model", "tiny.en"), r["method"], r["bits"], r["pad_stride"], r.get("per_window", 1),
                           r.get("precision", "float32")), []).append(r)
    if any(len(g) > 1 for g in groups.values()):
        lines += ["", "Over the seeds (mean ± sample std):", ""]
        for (model, method, bits, stride, per_window, precision), group in groups.items():
            times = [r["quant_seconds"] for r in group]
            text = (f"- {model} {method} {bits}-bit, pad stride {stride}, {per_window} per window, {precision}: "
                    f"{statistics.mean(times):.1f} s (median {statistics.median(times):.1f}, "
                    f"{min(times):.1f}-{max(times):.1f})")
            if with_wer and len(group) > 1 and all("wer" in r for r in group):
                wers = [100 * r["wer"] for r in group]
                text += f", WER {statistics.mean(wers):.2f} ± {statistics.stdev(wers):.2f} %"
                if all("token_kl" in r for r in group):
                    kls = [1000 * r["token_kl"] for r in group]
                    text += f", token KL {statistics.mean(kls):.2f} ± {statistics.stdev(kls):.2f} x 10^-3 nats"
            lines.append(text + f" ({len(group)} runs)")
    lines += ["", *(f"Not measured: {s['model']}: {s['why']}." for s in skipped)] if skipped else []
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["tiny.en"])
    parser.add_argument("--methods", nargs="+", default=["rtn", "gptq", "qep", "fade"],
                        help="methods, or fp32 for the model alone")
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    parser.add_argument("--pad-strides", type=int, nargs="+", default=[PAD_STRIDE],
                        help="encoder padding frames per sampled one in the moments (default: the pass's own, all of them)")
    parser.add_argument("--per-window", type=int, nargs="+", default=[RECORDINGS_PER_WINDOW],
                        help="calibration clips sharing an encoder window (default: the pass's own)")
    parser.add_argument("--child-per-window", type=int, default=RECORDINGS_PER_WINDOW, help="the child's clips per window")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--precisions", nargs="+", default=["auto"], choices=("auto", "float32", "bfloat16", "bfloat16-forward"),
                        help="the calibration pass's dtypes (engine/quant/precision.pass_precision)")
    parser.add_argument("--precision", help="the child's pass precision (default: the checkout's own)")
    parser.add_argument("--wer", action="store_true", help="score each quantized model on the test-other clips")
    parser.add_argument("--out", default="quant_memory", help="results name under bench/results")
    parser.add_argument("--baseline", help="checkout of an earlier commit whose pass is timed between these rows")
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "BITS", "PAD_STRIDE", "SEED"))
    parser.add_argument("--model", default="tiny.en", help="the child's model")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of every child (OMP_NUM_THREADS; 1: as the page's job worker); 0: all cores")
    args = parser.parse_args(argv)
    if args.child:
        method, bits, stride, seed = args.child
        print(json.dumps(child(method, int(bits), int(stride), int(seed), args.wer, args.model, args.precision,
                               args.child_per_window)))
        return {}
    rows = []

    def run(command: list[str], cwd: str | None = None, **labels) -> None:
        env = os.environ | ({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})
        out = subprocess.run([sys.executable, "-m", "bench.quant_memory", "--child"] + command, cwd=cwd,
                             capture_output=True, text=True, check=True, env=env)
        rows.append({**json.loads(out.stdout.strip().splitlines()[-1]), **labels,
                     "threads": args.threads or os.cpu_count()})
        write_results(args.out, {"rows": rows, "skipped": skipped, "baseline": baseline},
                      markdown(rows, args.wer, skipped))  # partial runs kept

    baseline = commit_of(args.baseline) if args.baseline else None
    from engine.whisper.models import available_models

    loadable = {m["name"]: m for m in available_models()}
    skipped = []
    for model in args.models:
        found = loadable.get(model, {"installed": True})  # a folder or hub id: the child tries it
        if not found["installed"]:
            skipped.append({"model": model, "why": found.get("problem") or f"not installed ({found['install']})"})
            write_results(args.out, {"rows": rows, "skipped": skipped, "baseline": baseline},
                          markdown(rows, args.wer, skipped))
            continue
        for bits in args.bits:
            for method in args.methods:
                for seed in args.seeds:  # seeds outermost: a slow spell of a shared machine hits every variant alike
                    if args.baseline:  # the same seed, every padding frame, with the earlier commit's pass
                        run([method, str(bits), "1", str(seed), "--model", model] + (["--wer"] if args.wer else []),
                            cwd=args.baseline, pad_stride=f"1 ({baseline})")
                    for stride in args.pad_strides:
                        for per_window in args.per_window:
                            for precision in args.precisions:
                                run([method, str(bits), str(stride), str(seed), "--model", model, "--precision",
                                     precision, "--child-per-window", str(per_window)] + (["--wer"] if args.wer else []))
    return {"rows": rows}


if __name__ == "__main__":
    main()
