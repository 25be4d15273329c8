"""An upload's two transcripts: one model call after the other on every core, or both at once on a core each?

An upload with a run needs full precision's transcript and the run's. The server's transcription desk
(serving/transcription.py) runs ``lanes`` model calls at once, each on its share of the transcription threads.
This times that request through the desk itself on real 5-20 s recordings (the load test's uploads), alternating
one lane on all the cores with one lane per core, and checks the transcripts are the same. The run is tiny.en
quantized with RTN 4-bit, loaded from its save as the server holds it (codes unpacked for each call).

    python -m bench.lanes [--clips 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from bench.common import write_results
from bench.load import UPLOAD_SECONDS, upload_pool


def main(argv: list[str] | None = None) -> dict:
    from engine.quant.artifacts import load_quantized, save_quantized
    from engine.quant.quantize import quantize
    from engine.quant.registry import make_config
    from engine.whisper.models import load_model
    from serving.policy import available_cores
    from serving.transcription import TranscriptionDesk

    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    cores = available_cores()
    full = load_model("tiny.en")
    with tempfile.TemporaryDirectory() as folder:
        save_quantized(quantize(load_model("tiny.en"), make_config("rtn", bits=4, group_size=64)), folder)
        run, _ = load_quantized(folder, compact=True)
    audios = upload_pool(*UPLOAD_SECONDS)[: args.clips]
    arms = {"1 lane x all threads": (1, cores), f"{cores} lanes x 1 thread": (cores, 1)}

    def answer_each(lanes: int, threads: int, round_: int) -> tuple[float, list[list[str]]]:
        torch.set_num_threads(threads)  # the desk's runner threads start after this and take this count
        texts, start = [], time.perf_counter()
        for i, audio in enumerate(audios):
            desk = TranscriptionDesk(lanes=lanes)  # a fresh desk: no answer kept from the other arm
            answers = desk.transcribe_each([(lambda: full, "tiny.en"), (lambda: run, f"tiny.en/rtn4-{round_}-{i}")],
                                           audio)
            texts.append([a.text for a in answers])
        return (time.perf_counter() - start) / len(audios), texts

    answer_each(1, cores, -1)  # first calls pay one-time setup
    seconds: dict[str, list[float]] = {arm: [] for arm in arms}
    texts: dict[str, list] = {}
    for round_ in range(args.rounds):
        for arm, (lanes, threads) in arms.items():
            took, texts[arm] = answer_each(lanes, threads, round_)
            seconds[arm].append(took)
    first, second = arms
    same = texts[first] == texts[second]
    ratio = statistics.median(seconds[second]) / statistics.median(seconds[first])
    data = {"cores": cores, "clips": len(audios), "audio_seconds": sum(len(a) for a in audios) / 16000,
            "seconds_per_upload": seconds, "same_transcripts": same, "ratio": ratio}
    lines = [f"# An upload's two transcripts (full precision and RTN 4-bit tiny.en): lanes of the desk, {cores} cores",
             "", f"{len(audios)} real recordings of {UPLOAD_SECONDS[0]:.0f}-{UPLOAD_SECONDS[1]:.0f} s "
             f"({data['audio_seconds']:.0f} s of audio), each answered by both models through the transcription "
             f"desk, {args.rounds} rounds alternating; median seconds per upload, nothing else running.", "",
             "| desk | seconds per upload | ratio |", "| --- | ---: | ---: |",
             *[f"| {arm} | {statistics.median(seconds[arm]):.2f} | "
               f"{statistics.median(seconds[arm]) / statistics.median(seconds[first]):.2f} |" for arm in arms],
             "", f"Same transcripts in both: {same}."]
    write_results("lanes", data, "\n".join(lines))
    return data


if __name__ == "__main__":
    main()
