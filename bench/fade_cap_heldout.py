"""FADE's 3-bit cap checked on speakers it was not chosen on.

The cap (alpha_max 0.5 for layers of 3 bits or fewer, engine/quant/methods/fade.py) was chosen on the 50
test-other clips of bench/results/explore-3bit.md. Here FADE 3-bit g64 tiny.en, calibrated on 32 sample_audio
clips (the page's calibration source, stratified by voice, seeds 0-4), is scored on the 54 other real clips
(test-misc, dev-clean-misc, LJSpeech, LibriVox: no test-other speaker, none used for calibration here), capped
and uncapped on the same calibration draw.

    python -m bench.fade_cap_heldout [--seeds 5]
"""

from __future__ import annotations

import argparse
import statistics

from bench.common import speech, write_results

ARMS = {"uncapped (alpha_max 1)": {"alpha_max": 1.0}, "capped (the default: 0.5 at 3 bits)": {}}


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
    args = parser.parse_args(argv)
    loaded = load_model("tiny.en")
    heldout = [u for name in REAL_CALIBRATION for u in load_dataset(speech(name))]
    fp32 = evaluate(loaded, heldout).wer
    wers: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for seed in range(args.seeds):
        calibration = calibration_for(loaded, make_config("fade", bits=3, group_size=64), [SAMPLE_DIR], 32, seed)
        for arm, settings in ARMS.items():
            result = quantize(loaded, make_config("fade", bits=3, group_size=64, **settings), calibration)
            wers[arm].append(evaluate(result.loaded, heldout).wer)
    data = {"clips": len(heldout), "fp32_wer": fp32, "seeds": args.seeds, "wer": wers}
    lines = ["# FADE 3-bit's cap on held-out speakers: sample_audio calibration, 54 real clips outside test-other", "",
             f"tiny.en, group 64, 32 calibration clips per seed, greedy decoding; fp32 WER {100 * fp32:.2f}% on the "
             f"{len(heldout)} clips.", "",
             "| FADE 3-bit | WER mean % | WER std | per seed |", "| --- | ---: | ---: | --- |"]
    for arm, values in wers.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {arm} | {100 * statistics.mean(values):.2f} | {100 * std:.2f} | "
                     + " ".join(f"{100 * v:.1f}" for v in values) + " |")
    write_results("fade_cap_heldout", data, "\n".join(lines))
    return data


if __name__ == "__main__":
    main()
