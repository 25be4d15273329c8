"""Audio loading: formats, bit depths, channels, sample rates, and every kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import AudioError
from engine.speech.audio import SAMPLE_RATE, load_audio, prepare_audio

from tests.helpers import speech_dir


def tone(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(audio))


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_wav_bit_depths_decode_to_the_same_tone(tmp_path, subtype):
    path = tmp_path / f"tone-{subtype}.wav"
    sf.write(path, tone(1.0, SAMPLE_RATE), SAMPLE_RATE, subtype=subtype)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.shape == (SAMPLE_RATE,)
    assert abs(dominant_frequency(audio) - 440) < 2
    assert abs(np.max(np.abs(audio)) - 0.5) < 0.02


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_any_sample_rate_is_resampled_to_16k_keeping_pitch(tmp_path, rate):
    path = tmp_path / f"tone-{rate}.flac"
    sf.write(path, tone(2.0, rate, freq=1000), rate)
    audio = load_audio(path)
    assert abs(len(audio) - 2 * SAMPLE_RATE) <= 2
    assert abs(dominant_frequency(audio) - 1000) < 2


def test_stereo_is_mixed_to_mono(tmp_path):
    left, right = tone(1.0, SAMPLE_RATE, amplitude=0.4), np.zeros(SAMPLE_RATE, np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SAMPLE_RATE)
    audio = load_audio(path)
    assert audio.ndim == 1 and abs(np.max(np.abs(audio)) - 0.2) < 0.01


@pytest.mark.parametrize("fmt,ext", [("OGG", "ogg"), ("MP3", "mp3")])
def test_compressed_formats_when_the_decoder_supports_them(tmp_path, fmt, ext):
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile has no {fmt}")
    path = tmp_path / f"tone.{ext}"
    sf.write(path, tone(1.0, 44100), 44100, format=fmt)
    audio = load_audio(path)
    assert abs(len(audio) - SAMPLE_RATE) < 0.05 * SAMPLE_RATE
    assert abs(dominant_frequency(audio) - 440) < 5


def test_jfk_flac_is_44k_stereo_24bit_and_loads():
    path = speech_dir("jfk") / "jfk.flac"
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (44100, 2, "PCM_24")
    assert abs(len(load_audio(path)) / SAMPLE_RATE - info.duration) < 0.01


def write_bytes(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda p: write_bytes(p, "empty.wav", b""), "empty"),
        (lambda p: write_bytes(p, "notes.txt", b"this is not audio at all\n" * 20), "not a readable audio file"),
        (lambda p: write_bytes(p, "random.wav", np.random.default_rng(0).bytes(4096)), "not a readable audio file"),
        (lambda p: p / "missing.wav", "does not exist"),
    ],
)
def test_unreadable_files_get_one_sentence(tmp_path, make, expected):
    with pytest.raises(AudioError, match=expected) as info:
        load_audio(make(tmp_path))
    assert "\n" not in str(info.value)


def test_truncated_file_is_rejected(tmp_path):
    path = tmp_path / "full.flac"
    sf.write(path, tone(2.0, SAMPLE_RATE), SAMPLE_RATE)
    cut = write_bytes(tmp_path, "cut.flac", path.read_bytes()[:60])
    with pytest.raises(AudioError):
        load_audio(cut)


def test_zero_frames_silence_and_nan(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(path)
    sf.write(path, np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="silent"):
        load_audio(path)
    bad = tone(1.0, SAMPLE_RATE)
    bad[100] = np.nan
    sf.write(path, bad, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(path)


def test_duration_limit_is_checked_from_the_header(tmp_path):
    path = tmp_path / "long.flac"
    sf.write(path, tone(5.0, SAMPLE_RATE), SAMPLE_RATE)
    with pytest.raises(AudioError, match="limit"):
        load_audio(path, max_seconds=3)


@settings(max_examples=60, deadline=None)
@given(
    frames=st.integers(0, 4000),
    channels=st.integers(1, 6),
    rate=st.sampled_from([1, 8000, 11025, 16000, 44100, 96000]),
    dtype=st.sampled_from([np.int16, np.int32, np.uint8, np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_prepare_audio_returns_clean_mono_or_one_clear_error(frames, channels, rate, dtype, seed):
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        samples = rng.integers(info.min, info.max, size=(frames, channels), dtype=dtype, endpoint=True)
    else:
        samples = rng.uniform(-1, 1, size=(frames, channels)).astype(dtype)
    try:
        out = prepare_audio(samples, rate)
    except AudioError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert out.dtype == np.float32 and out.ndim == 1
    assert np.all(np.isfinite(out)) and np.max(np.abs(out)) <= 1.0
    assert abs(len(out) - frames * SAMPLE_RATE / rate) <= 2 + 0.01 * len(out)
