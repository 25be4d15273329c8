"""Is answering waiting transcriptions in one batch faster than one by one? (serving/transcription.py)

The server's transcriptions run on their share of the cores (ASRQ_THREADS; 1 thread on a 2-vCPU Space).
This times tiny.en on N real 5-20 s recordings (the load test's uploads), one call per clip against one
batched call, alternating, on the given thread count, and checks the transcripts are the same. The model's
output layer is laid out for decoding, as the server lays out every model it loads (engine/whisper/decoding_layout.py).

    python -m bench.batching [--threads 1] [--clips 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.common import write_results
from bench.load import UPLOAD_SECONDS, upload_pool


def main(argv: list[str] | None = None) -> dict:
    from engine.whisper.decoding_layout import lay_out_for_decoding
    from engine.whisper.models import load_model
    from engine.speech.transcribe import transcribe

    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_model("tiny.en")
    lay_out_for_decoding(loaded.model)
    audios = upload_pool(*UPLOAD_SECONDS)[: args.clips]
    transcribe(loaded, audios[:1])  # first call pays one-time setup
    one_by_one, batched, same = [], [], True
    for _ in range(args.rounds):
        start = time.perf_counter()
        alone = [transcribe(loaded, [a])[0] for a in audios]
        one_by_one.append(time.perf_counter() - start)
        start = time.perf_counter()
        together = transcribe(loaded, audios)
        batched.append(time.perf_counter() - start)
        same = same and alone == together
    data = {"threads": args.threads, "clips": len(audios), "audio_seconds": sum(len(a) for a in audios) / 16000,
            "one_by_one_s": one_by_one, "batched_s": batched, "same_transcripts": same,
            "ratio_batched_to_one_by_one": statistics.median(batched) / statistics.median(one_by_one)}
    lines = [f"# Waiting transcriptions: one batch against one by one (tiny.en, {args.threads} thread(s), the output "
             "layer laid out for decoding as the server's)", "",
             f"{len(audios)} real recordings of {UPLOAD_SECONDS[0]:.0f}-{UPLOAD_SECONDS[1]:.0f} s "
             f"({data['audio_seconds']:.0f} s of audio), {args.rounds} rounds alternating, median seconds.", "",
             "| one by one s | one batch s | batch / one by one | same transcripts |", "| ---: | ---: | ---: | --- |",
             f"| {statistics.median(one_by_one):.2f} | {statistics.median(batched):.2f} | "
             f"{data['ratio_batched_to_one_by_one']:.2f} | {same} |"]
    write_results("batching", data, "\n".join(lines))
    return data


if __name__ == "__main__":
    main()
