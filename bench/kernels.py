"""Real-kernel latency: the app's int8 (torch dynamic) and int4 (torch CPU weight-only) paths against
faster-whisper int8 on the same 50 clips, one run. Fake-quantized models are not timed as low-bit models.

RTF = decoding seconds per audio second, greedy, batch 1 (faster-whisper's own unit of work).
"""

from __future__ import annotations

import logging

import torch

from bench.common import test_other_clips, write_results
from bench.foundation import run_faster_whisper, run_ours
from engine.quant.config import FADEConfig, W8A8Config
from engine.quant.kernels import int4_weight_only, int8_dynamic
from engine.quant.quantize import quantize
from engine.speech.evaluate import TextScorer
from engine.speech.samples import SAMPLE_DIR
from engine.whisper.models import REGISTRY, load_model
from engine.workflows.experiment import build_calibration, calibration_clips

log = logging.getLogger("bench.kernels")


def main(argv=None) -> dict:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-int4", action="store_true", help="leave out the int4 kernel (about 10 minutes)")
    args = parser.parse_args(argv)
    clips = test_other_clips()
    utterances, audios, refs, seconds = clips.utterances, clips.audios, clips.references, clips.seconds
    scorer = TextScorer()
    loaded = load_model("tiny.en")
    fade4 = quantize(loaded, FADEConfig(bits=4, group_size=64),
                     build_calibration(loaded, calibration_clips(SAMPLE_DIR, 32, 0, utterances)))
    int4_model, on_kernel = int4_weight_only(fade4)
    w8a8 = quantize(loaded, W8A8Config(activations="dynamic"))
    folder = str(REGISTRY["tiny.en"].locate().model_parts[0].parent)
    systems = {
        "app fp32": lambda: run_ours(loaded, audios, 1),
        "app int8 dynamic (real int8 kernels)": lambda: run_ours(int8_dynamic(loaded), audios, 1),
        "app W8A8 dynamic, simulated (fake quant)": lambda: run_ours(w8a8.loaded, audios, 1),
        "app W8A8 dynamic on the real int8 kernels": lambda: run_ours(int8_dynamic(w8a8.loaded), audios, 1),
        "app FADE 4-bit g64, fake quant (float weights)": lambda: run_ours(fade4.loaded, audios, 1),
        f"app FADE 4-bit g64 on the int4 kernel ({len(on_kernel)} layers)": lambda: run_ours(int4_model, audios, 1),
        "faster-whisper int8": lambda: run_faster_whisper(folder, "int8", audios),
    }
    if args.skip_int4:
        systems = {name: fn for name, fn in systems.items() if "int4" not in name}
    rows = {}
    for name, fn in systems.items():
        log.info("running %s", name)
        texts, elapsed = fn()
        wer, _ = scorer.score(refs, texts)
        rows[name] = {"wer": wer, "rtf": elapsed / seconds}
    ref = rows["faster-whisper int8"]["rtf"]
    for row in rows.values():
        row["rtf_vs_fw_int8"] = row["rtf"] / ref
    md = [f"# Real kernels: tiny.en, {len(audios)} test-other clips ({seconds:.0f} s), batch 1, "
          f"{torch.get_num_threads()} threads", "",
          "| system | WER % | RTF | RTF / faster-whisper int8 |", "| --- | ---: | ---: | ---: |"]
    md += [f"| {n} | {100 * r['wer']:.2f} | {r['rtf']:.4f} | {r['rtf_vs_fw_int8']:.2f} |" for n, r in rows.items()]
    md += ["", "Below 1.00 is faster than faster-whisper int8. The int4 kernel is torch's "
           "_weight_int4pack_mm_for_cpu running our codes exactly; int8 is torch dynamic quantization "
           "(per-channel int8 weights, int8 activations on the fly) of the block linears. W8A8 dynamic on the real "
           "int8 kernels is the W8A8 model's weights run by those kernels (its simulated input quantizers removed: "
           "the kernel quantizes its inputs itself)."]
    if args.skip_int4:
        md += ["", "This run left out the int4 kernel (--skip-int4); the last full run measured it at 32.8x the "
               "time of faster-whisper int8 (exact but slow: fp32 activations)."]
    write_results("kernels", {"clips": len(audios), "systems": rows}, "\n".join(md))
    return rows
