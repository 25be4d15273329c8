"""Damaged audio for the loader's fuzzing, shared by tests/test_hostile_input.py and bench/fuzz_audio.py:
real encoded clips with bytes overwritten, cut short or spliced, and what a successful load must give."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
from hypothesis import strategies as st

from engine.speech.audio import SAMPLE_RATE


def _encoded(fmt: str, subtype: str | None = None, seconds: float = 0.5) -> bytes:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    buffer = io.BytesIO()
    sf.write(buffer, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SAMPLE_RATE, format=fmt, subtype=subtype)
    return buffer.getvalue()


def seed_files() -> list[bytes]:
    seeds = [_encoded("WAV", "PCM_16"), _encoded("WAV", "FLOAT"), _encoded("FLAC"), _encoded("OGG")]
    try:
        seeds.append(_encoded("MP3"))
    except (sf.LibsndfileError, TypeError, ValueError):  # libsndfile without an MP3 encoder
        pass
    return seeds


SEEDS = seed_files()


@st.composite
def damaged_audio(draw) -> bytes:
    """A real encoded clip with bytes overwritten, cut short, or spliced; or plain random bytes."""
    kind = draw(st.sampled_from(["flip", "truncate", "splice", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    if kind == "truncate":
        return bytes(data[:draw(st.integers(0, len(data)))])
    if kind == "splice":  # a header from one format on the body of another
        other = draw(st.sampled_from(SEEDS))
        cut = draw(st.integers(0, 64))
        return bytes(data[:cut] + other[cut:])
    for _ in range(draw(st.integers(1, 16))):
        where = draw(st.integers(0, min(len(data) - 1, 200)))  # headers live at the front
        data[where] = draw(st.integers(0, 255))
    return bytes(data)


def check_loaded(audio: np.ndarray) -> None:
    """What a successful load must give (raises AssertionError otherwise)."""
    assert audio.dtype == np.float32 and audio.ndim == 1 and len(audio) > 0
    assert np.all(np.isfinite(audio)) and np.abs(audio).max() <= 1.0
