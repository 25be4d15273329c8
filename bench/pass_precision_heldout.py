"""The pass precision's default checked on speakers it was not chosen on: FADE 4-bit tiny.en calibrated on 32
test-other clips (seeded draw), scored on the 54 other real clips (test-misc, dev-clean-misc, LJSpeech, LibriVox),
WER and per-token KL to fp32 (bench/common.token_kl), float32 against bfloat16-forward. Each precision in its own
process, one after the other.

    python -m bench.pass_precision_heldout [--seeds 0] [--precisions float32 bfloat16-forward]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench.common import write_results


def child(precision: str, seed: int) -> dict:
    from bench.common import speech, speech_clips, token_kl
    from bench.methods import REAL_CALIBRATION
    from engine.quant.precision import pass_precision
    from engine.quant.quantize import quantize
    from engine.quant.registry import make_config
    from engine.speech.evaluate import evaluate, load_dataset
    from engine.whisper.models import load_model
    from engine.workflows.experiment import calibration_for

    loaded = load_model("tiny.en")
    clips = speech_clips(REAL_CALIBRATION)
    heldout = [u for name in REAL_CALIBRATION for u in load_dataset(speech(name))]
    config = make_config("fade", bits=4, group_size=64)
    calibration = calibration_for(loaded, config, [speech("librispeech-test-other")], 32, seed, heldout)
    result = quantize(loaded, config, calibration, precision=pass_precision(precision))
    return {"precision": precision, "seed": seed, "clips": len(heldout), "quant_seconds": result.seconds,
            "wer": evaluate(result.loaded, heldout).wer, "token_kl": token_kl(loaded, result.loaded, clips)}


def markdown(rows: list[dict]) -> str:
    lines = ["# Pass precision on held-out speakers: FADE 4-bit tiny.en, calibrated on 32 test-other clips, "
             "scored on the 54 other real clips", "",
             "| precision | seed | quantize s | WER % | token KL to fp32, 10^-3 nats |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['precision']} | {r['seed']} | {r['quant_seconds']:.1f} | {100 * r['wer']:.2f} | "
              f"{1000 * r['token_kl']:.2f} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16-forward"])
    parser.add_argument("--child", nargs=2, metavar=("PRECISION", "SEED"))
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return {}
    rows = []
    for seed in args.seeds:
        for precision in args.precisions:
            out = subprocess.run([sys.executable, "-m", "bench.pass_precision_heldout", "--child", precision, str(seed)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            write_results("pass_precision_heldout", {"rows": rows}, markdown(rows))
    return {"rows": rows}


if __name__ == "__main__":
    main()
