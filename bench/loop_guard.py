"""The page's loop guard (engine/speech/transcribe.py): does it leave real transcripts alone, and what does it save?

Full precision tiny.en transcribes every clip of ../shared/speech and sample_audio/ with and without the guard:
tokens a second of audio (the rate the guard's budget must stay above) and how many transcripts the guard
changed. Then RTN 2-bit g64 (a run that loops on real speech) transcribes the load test's upload clips one by
one on one thread, without and with the guard: seconds, and how many it cut.

    python -m bench.loop_guard [--uploads 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from bench.common import REPO, SHARED_SPEECH, write_results
from bench.load import UPLOAD_SECONDS, upload_pool


def main(argv: list[str] | None = None) -> dict:
    from engine.errors import DatasetError
    from engine.quant.quantize import quantize
    from engine.quant.registry import make_config
    from engine.speech.audio import SAMPLE_RATE, load_audio
    from engine.speech.evaluate import load_dataset
    from engine.speech.transcribe import LOOP_GUARD_TOKENS_PER_SECOND, token_budget, transcribe_detailed
    from engine.whisper.models import load_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--uploads", type=int, default=16)
    args = parser.parse_args(argv)
    full = load_model("tiny.en")
    rates, changed, clips = [], 0, 0
    for folder in [*sorted(p for p in SHARED_SPEECH.iterdir() if p.is_dir()), REPO / "sample_audio"]:
        try:
            audios = [load_audio(u.path) for u in load_dataset(folder)]
        except DatasetError:  # a folder without transcripts
            continue
        plain = transcribe_detailed(full, audios)
        guarded = transcribe_detailed(full, audios, tokens_per_second=LOOP_GUARD_TOKENS_PER_SECOND)
        changed += sum(p.text != g.text or g.cut for p, g in zip(plain, guarded))
        clips += len(audios)
        rates += [len(full.tokens.encode(p.text)) / (len(a) / SAMPLE_RATE) for p, a in zip(plain, audios)]

    torch.set_num_threads(1)
    pool = upload_pool(*UPLOAD_SECONDS)
    uploads = [pool[i] for i in np.random.default_rng(0).choice(len(pool), args.uploads, replace=False)]
    collapsed = quantize(load_model("tiny.en"), make_config("rtn", bits=2, group_size=64)).loaded
    arms = {}
    for arm, rate in (("without the guard", None), ("with the guard", LOOP_GUARD_TOKENS_PER_SECOND)):
        start = time.perf_counter()
        decoded = [transcribe_detailed(collapsed, [a], tokens_per_second=rate)[0] for a in uploads]
        arms[arm] = {"seconds": time.perf_counter() - start, "cut": sum(d.cut for d in decoded),
                     "tokens": [len(collapsed.tokens.encode(d.text)) for d in decoded]}
    data = {"tokens_per_second": LOOP_GUARD_TOKENS_PER_SECOND, "budget_10_s": token_budget(10.0),
            "clips": clips, "rate_median": statistics.median(rates), "rate_max": max(rates),
            "full_precision_transcripts_changed": changed, "uploads": len(uploads), "rtn2": arms}
    without, with_ = arms["without the guard"], arms["with the guard"]
    lines = ["# The loop guard: 16 + 8 tokens a second of audio", "",
             f"Full precision tiny.en on {clips} real and synthetic clips (../shared/speech, sample_audio): "
             f"{data['rate_median']:.2f} tokens a second at the median, {data['rate_max']:.2f} at most; "
             f"transcripts the guard changed: {changed}.", "",
             f"RTN 2-bit g64 on {len(uploads)} of the load test's 5-20 s upload clips, one at a time, 1 thread:", "",
             "| decoding | seconds | transcripts cut | longest, tokens |", "| --- | ---: | ---: | ---: |",
             f"| without the guard | {without['seconds']:.1f} | - | {max(without['tokens'])} |",
             f"| with the guard | {with_['seconds']:.1f} | {with_['cut']} | {max(with_['tokens'])} |"]
    write_results("loop_guard", data, "\n".join(lines))
    return data


if __name__ == "__main__":
    main()
