"""tiny.en as the app runs it against faster-whisper (float32 and int8) on the same 50 real clips, one run.

WER/CER after the same normalizer; real-time factor = decoding seconds / audio seconds (audio decoded
beforehand for every system). Ratios are against faster-whisper, since absolute times here are noisy.
"""

from __future__ import annotations

import logging
import time

import torch

from bench.common import test_other_clips, write_results
from engine.speech.evaluate import TextScorer
from engine.speech.transcribe import transcribe
from engine.whisper.models import REGISTRY, load_model

log = logging.getLogger("bench.foundation")


def run_faster_whisper(folder: str, compute_type: str, audios) -> tuple[list[str], float]:
    from faster_whisper import WhisperModel

    model = WhisperModel(folder, device="cpu", compute_type=compute_type, cpu_threads=torch.get_num_threads())
    model.transcribe(audios[0], beam_size=1)  # warm-up
    texts, start = [], time.perf_counter()
    for audio in audios:
        segments, _ = model.transcribe(audio, beam_size=1, temperature=0.0, without_timestamps=True,
                                       condition_on_previous_text=False, vad_filter=False)
        texts.append(" ".join(s.text.strip() for s in segments))
    return texts, time.perf_counter() - start


def run_ours(loaded, audios, batch_size: int) -> tuple[list[str], float]:
    transcribe(loaded, audios[:1])  # warm-up
    start = time.perf_counter()
    texts = transcribe(loaded, audios, batch_size=batch_size)
    return texts, time.perf_counter() - start


def main() -> dict:
    clips = test_other_clips()
    utterances, audios, refs, seconds = clips.utterances, clips.audios, clips.references, clips.seconds
    scorer = TextScorer()
    loaded = load_model("tiny.en")
    folder = str(REGISTRY["tiny.en"].locate().model_parts[0].parent)
    systems = {
        "app tiny.en fp32, batch 1": lambda: run_ours(loaded, audios, 1),
        "app tiny.en fp32, batch 8": lambda: run_ours(loaded, audios, 8),
        "faster-whisper float32": lambda: run_faster_whisper(folder, "float32", audios),
        "faster-whisper int8": lambda: run_faster_whisper(folder, "int8", audios),
    }
    rows = {}
    for name, fn in systems.items():
        log.info("running %s", name)
        texts, elapsed = fn()
        wer, cer = scorer.score(refs, texts)
        rows[name] = {"wer": wer, "cer": cer, "rtf": elapsed / seconds, "seconds": elapsed}
    ref = rows["faster-whisper int8"]
    for row in rows.values():
        row["rtf_vs_fw_int8"] = row["rtf"] / ref["rtf"]
        row["wer_vs_fw_int8"] = row["wer"] / ref["wer"]
    md = [
        f"# Foundation: tiny.en, {len(audios)} LibriSpeech test-other clips ({seconds:.0f} s), greedy, "
        f"{torch.get_num_threads()} threads",
        "",
        "| system | WER % | CER % | RTF | RTF / fw int8 | WER / fw int8 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        md.append(f"| {name} | {100 * r['wer']:.2f} | {100 * r['cer']:.2f} | {r['rtf']:.4f} | "
                  f"{r['rtf_vs_fw_int8']:.2f} | {r['wer_vs_fw_int8']:.2f} |")
    md += ["", "RTF: decoding seconds per audio second (lower is faster). faster-whisper computes log-mel on the "
           "unpadded clip, the app (like openai-whisper and transformers) on the 30 s padded window, so "
           "transcripts can differ slightly although the weights are the same."]
    data = {"clips": len(audios), "audio_seconds": seconds, "systems": rows}
    write_results("foundation", data, "\n".join(md))
    return data
