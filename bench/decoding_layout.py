"""The output layer laid out for decoding (engine/whisper/decoding_layout.py): the same transcripts, how much faster?

Two copies of tiny.en, one as it loads (row-major output layer) and one laid out column-major, transcribe the same
clips on one thread, clip by clip and alternating which copy goes first: every clip of ../shared/speech and
sample_audio/ at full precision one at a time (the desk's usual call), the load test's upload clips four at a time
(the desk's widest batch), and the upload clips with an RTN 4-bit g64 run (a quantized model the page serves).
Reported: seconds per arm, the ratio, and how many transcripts differ between the layouts; then the output layer's
product alone for 1-4 rows in both layouts, and where a one-clip call's time goes (the encoder's fixed 30 s window
against token-by-token decoding) with the layout the server uses.

    python -m bench.decoding_layout [--uploads 16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.common import REPO, SHARED_SPEECH, write_results
from bench.load import UPLOAD_SECONDS, upload_pool


def _paired(models: dict, batches: list[list[np.ndarray]]) -> dict:
    """Seconds and texts of each model over ``batches``, alternating which model runs a batch first."""
    from engine.speech.transcribe import transcribe

    seconds = {name: 0.0 for name in models}
    texts: dict[str, list[str]] = {name: [] for name in models}
    names = list(models)
    for i, batch in enumerate(batches):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            texts[name] += transcribe(models[name], batch, batch_size=len(batch))
            seconds[name] += time.perf_counter() - start
    first, second = names
    return {"batches": len(batches), "clips": sum(len(b) for b in batches), "seconds": seconds,
            "ratio": seconds[second] / seconds[first],
            "transcripts_differing": sum(a != b for a, b in zip(texts[first], texts[second]))}


def head_milliseconds(weight: torch.Tensor, rows: int, repeats: int = 50) -> dict:
    """Milliseconds of one decoding step's output-layer product (rows, d_model) x (vocab, d_model)^T, the weight as
    it loads (row-major) and laid out column-major: the same values, the same torch call."""
    hidden = torch.randn(rows, weight.shape[1], generator=torch.Generator().manual_seed(0))
    times = {}
    for name, w in (("row-major", weight.contiguous()), ("column-major", weight.t().contiguous().t())):
        for _ in range(5):
            torch.nn.functional.linear(hidden, w)
        start = time.perf_counter()
        for _ in range(repeats):
            torch.nn.functional.linear(hidden, w)
        times[name] = 1000 * (time.perf_counter() - start) / repeats
    return times


def call_anatomy(loaded, audios: list[np.ndarray]) -> dict:
    """Per clip, one at a time: the whole call (engine/speech/transcribe.py), its log-mel features and encoder
    alone (Whisper encodes a 30 s window whatever the clip's length), the rest (decoding), and the transcript's
    tokens."""
    from engine.speech.audio import SAMPLE_RATE
    from engine.speech.transcribe import transcribe

    call = encoder = 0.0
    tokens = 0
    for audio in audios:
        start = time.perf_counter()
        text = transcribe(loaded, [audio])[0]
        call += time.perf_counter() - start
        start = time.perf_counter()
        with torch.inference_mode():
            features = loaded.feature_extractor([audio], sampling_rate=SAMPLE_RATE, return_tensors="pt")
            loaded.model.model.encoder(features.input_features)
        encoder += time.perf_counter() - start
        tokens += len(loaded.tokens.encode(text)) + 1  # and the end of text
    n = len(audios)
    return {"clips": n, "audio_s": sum(len(a) for a in audios) / SAMPLE_RATE / n, "call_ms": 1000 * call / n,
            "encoder_ms": 1000 * encoder / n, "decoding_ms": 1000 * (call - encoder) / n, "tokens": tokens / n,
            "decoding_ms_per_token": 1000 * (call - encoder) / tokens}


def main(argv: list[str] | None = None) -> dict:
    from engine.errors import DatasetError
    from engine.quant.quantize import quantize
    from engine.quant.registry import make_config
    from engine.speech.audio import load_audio
    from engine.speech.evaluate import load_dataset
    from engine.whisper.decoding_layout import lay_out_for_decoding
    from engine.whisper.models import load_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--uploads", type=int, default=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    clips = []
    for folder in [*sorted(p for p in SHARED_SPEECH.iterdir() if p.is_dir()), REPO / "sample_audio"]:
        try:
            clips += [load_audio(u.path) for u in load_dataset(folder)]
        except DatasetError:  # a folder without transcripts
            continue
    pool = upload_pool(*UPLOAD_SECONDS)
    uploads = [pool[i] for i in np.random.default_rng(0).choice(len(pool), args.uploads, replace=False)]

    def pair(model_of) -> dict:
        laid_out = model_of()
        lay_out_for_decoding(laid_out.model)
        return {"row-major": model_of(), "column-major": laid_out}

    full = pair(lambda: load_model("tiny.en"))
    rtn4 = pair(lambda: quantize(load_model("tiny.en"), make_config("rtn", bits=4, group_size=64)).loaded)
    for models in (full, rtn4):  # a first call each outside the timing
        for loaded in models.values():
            _paired({"a": loaded, "b": loaded}, [uploads[:1]])
    arms = {
        "full precision, every clip, one at a time": _paired(full, [[a] for a in clips]),
        "full precision, upload clips, four at a time":
            _paired(full, [uploads[i:i + 4] for i in range(0, len(uploads), 4)]),
        "RTN 4-bit g64, upload clips, one at a time": _paired(rtn4, [[a] for a in uploads]),
    }
    head = {rows: head_milliseconds(full["row-major"].model.proj_out.weight.detach(), rows) for rows in (1, 2, 3, 4)}
    anatomy = call_anatomy(full["column-major"], uploads)
    data = {"threads": 1, "uploads": len(uploads), "arms": arms, "head_ms": head, "call_anatomy": anatomy}
    lines = ["# The output layer laid out for decoding (column-major) against as it loads (row-major)", "",
             "tiny.en on one thread, the two copies alternating which goes first on each call "
             "(engine/whisper/decoding_layout.py; the server lays out every model it loads).", "",
             "| arm | calls | clips | row-major s | column-major s | ratio | transcripts differing |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, arm in arms.items():
        lines.append(f"| {name} | {arm['batches']} | {arm['clips']} | {arm['seconds']['row-major']:.1f} | "
                     f"{arm['seconds']['column-major']:.1f} | {arm['ratio']:.2f} | {arm['transcripts_differing']} |")
    lines += ["", "The output layer's product alone (tiny.en's 51864 x 384 float32 head, one decoding step, "
              "mean of 50):", "",
              "| rows | row-major ms | column-major ms |", "| ---: | ---: | ---: |"]
    lines += [f"| {rows} | {t['row-major']:.2f} | {t['column-major']:.2f} |" for rows, t in head.items()]
    a = anatomy
    lines += ["", f"Where a one-clip call's time goes (full precision, column-major, the {a['clips']} upload clips one "
              f"at a time, {a['audio_s']:.1f} s of audio a clip): {a['call_ms']:.0f} ms a call, of it log-mel features "
              f"and the encoder {a['encoder_ms']:.0f} ms ({a['encoder_ms'] / a['call_ms']:.0%}; a 30 s window "
              f"whatever the clip's length) and decoding {a['decoding_ms']:.0f} ms for {a['tokens']:.1f} tokens "
              f"({a['decoding_ms_per_token']:.1f} ms a token, the output layer's product of one row among it)."]
    write_results("decoding_layout", data, "\n".join(lines))
    return data


if __name__ == "__main__":
    main()
