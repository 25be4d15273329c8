"""FADE's cap on alpha checked on speakers it was not chosen on.

The cap (alpha_max 0.5, engine/quant/methods/fade.py: fade_alpha_max) was chosen on the 50 test-other clips of
bench/results/explore-3bit.md. Here FADE 3-bit (or --bits) g64 tiny.en, calibrated on 32 sample_audio
clips (the page's calibration source, stratified by voice, seeds 0-4), is scored on the 54 other real clips
(test-misc, dev-clean-misc, LJSpeech, LibriVox: no test-other speaker, none used for calibration here), capped
and uncapped on the same calibration draw.

    python -m bench.fade_cap_heldout [--seeds 5] [--bits 3]   (bits other than 3: fade_cap_heldout-{bits}bit)
"""

from __future__ import annotations

import argparse
import statistics

from bench.common import speech, write_results

ARMS = {"uncapped (alpha_max 1)": {"alpha_max": 1.0}, "capped (alpha_max 0.5)": {"alpha_max": 0.5}}


def main(argv: list[str] | None = None) -> dict:
    from bench.methods import REAL_CALIBRATION
    from engine.quant.quantize import quantize
    from engine.quant.registry import make_config
    from engine.speech.evaluate import evaluate, load_dataset
    from engine.speech.samples import SAMPLE_DIR
    from engine.whisper.models import load_model
    from engine.workflows.experiment import calibration_for

    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--bits", type=int, default=3)
    args = parser.parse_args(argv)
    loaded = load_model("tiny.en")
    heldout = [u for name in REAL_CALIBRATION for u in load_dataset(speech(name))]
    fp32 = evaluate(loaded, heldout).wer
    wers: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for seed in range(args.seeds):
        config = make_config("fade", bits=args.bits, group_size=64)
        calibration = calibration_for(loaded, config, [SAMPLE_DIR], 32, seed)
        for arm, settings in ARMS.items():
            result = quantize(loaded, make_config("fade", bits=args.bits, group_size=64, **settings), calibration)
            wers[arm].append(evaluate(result.loaded, heldout).wer)
    data = {"clips": len(heldout), "bits": args.bits, "fp32_wer": fp32, "seeds": args.seeds, "wer": wers}
    lines = [f"# FADE {args.bits}-bit's cap on held-out speakers: sample_audio calibration, {len(heldout)} real clips "
             "outside test-other", "",
             f"tiny.en, group 64, 32 calibration clips per seed, greedy decoding; fp32 WER {100 * fp32:.2f}% on the "
             f"{len(heldout)} clips.", "",
             f"| FADE {args.bits}-bit | WER mean % | WER std | per seed |", "| --- | ---: | ---: | --- |"]
    for arm, values in wers.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {arm} | {100 * statistics.mean(values):.2f} | {100 * std:.2f} | "
                     + " ".join(f"{100 * v:.1f}" for v in values) + " |")
    capped, uncapped = (wers[arm] for arm in ("capped (alpha_max 0.5)", "uncapped (alpha_max 1)"))
    lines += ["", "Capped minus uncapped on the same draw, points: "
              + " ".join(f"{100 * (c - u):+.1f}" for c, u in zip(capped, uncapped))]
    write_results("fade_cap_heldout" if args.bits == 3 else f"fade_cap_heldout-{args.bits}bit", data, "\n".join(lines))
    return data


if __name__ == "__main__":
    main()
