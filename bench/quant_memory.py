"""Quantization time and peak memory per method, each in its own fresh process (nothing else resident):
the process loads tiny.en, decodes 32 real calibration clips and quantizes once; its peak RSS is the
kernel's VmHWM at the end.

    python -m bench.quant_memory [--methods fade gptq qep rtn] [--bits 4 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.common import write_results


def child(method: str, bits: int) -> dict:
    from bench.common import speech
    from bench.methods import N_CALIB, REAL_CALIBRATION, peak_rss_mb
    from engine.evaluate import load_dataset
    from engine.experiment import build_calibration, calibration_clips
    from engine.methods import get_method, make_config
    from engine.models import load_model
    from engine.quantize import quantize

    start = time.perf_counter()
    loaded = load_model("tiny.en")
    config = make_config(method, bits=bits, group_size=64)
    calibration = None
    if get_method(method).uses_calibration(config):
        exclude = load_dataset(speech("librispeech-test-other"))
        calibration = build_calibration(loaded, calibration_clips([speech(n) for n in REAL_CALIBRATION], N_CALIB, 0,
                                                                  exclude))
    result = quantize(loaded, config, calibration)
    return {"method": method, "bits": bits, "quant_seconds": result.seconds,
            "process_seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", nargs="+", default=["rtn", "gptq", "qep", "fade"])
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "BITS"))
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return {}
    rows = []
    for bits in args.bits:
        for method in args.methods:
            out = subprocess.run([sys.executable, "-m", "bench.quant_memory", "--child", method, str(bits)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    lines = ["# Quantization time and peak memory, tiny.en, 32 real calibration clips, group size 64",
             "", "Each row is a fresh process: model + calibration audio + the pass. Target for FADE: < 60 s, < 3 GB.",
             "", "| method | bits | quantize s | process peak RSS MB |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['method']} | {r['bits']} | {r['quant_seconds']:.1f} | {r['peak_rss_mb']:.0f} |" for r in rows]
    write_results("quant_memory", {"rows": rows}, "\n".join(lines))
    return {"rows": rows}


if __name__ == "__main__":
    main()
