"""Hostile input: damaged and strange audio files, and nonsense job requests, each get one clear sentence and
change nothing (no job started, no history row, no saved file)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.audio_fuzz import check_loaded, damaged_audio
from engine.errors import AudioError, UserError
from engine.speech.audio import SAMPLE_RATE, load_audio


def tone(seconds: float, rate: int = SAMPLE_RATE, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


def one_sentence(exc: Exception) -> bool:
    text = str(exc)
    return bool(text) and "\n" not in text and len(text) < 300


def test_enormous_header_decodes_only_the_bytes_present(tmp_path):
    # A WAV header claiming ~4 GB of samples with 1 KB of noise behind it: libsndfile trusts the file size
    # over the header, so what decodes is the 512 samples that are there (no 4 GB allocation, no crash).
    body = (np.random.default_rng(0).standard_normal(512) * 3000).astype(np.int16).tobytes()
    header = (b"RIFF" + struct.pack("<I", 0xFFFFFFF0) + b"WAVE" + b"fmt " +
              struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16) + b"data" + struct.pack("<I", 0xFFFFFF00))
    path = tmp_path / "huge-header.wav"
    path.write_bytes(header + body)
    audio = load_audio(path, max_seconds=600)
    assert len(audio) == 512 and np.abs(audio).max() > 0


def test_an_hour_long_file_is_refused_from_its_header(tmp_path):
    path = tmp_path / "hour.wav"
    rate = 1000  # an hour at 1 kHz, 8-bit: 3.6 MB on disk
    sf.write(path, np.zeros(3600 * rate, np.float32), rate, subtype="PCM_U8")
    with pytest.raises(AudioError, match="60.0 minutes long; the limit here is 10.0 minutes") as info:
        load_audio(path, max_seconds=600)
    assert one_sentence(info.value)


def test_long_silence_and_oversized_uploads(tmp_path):
    path = tmp_path / "silence.flac"
    sf.write(path, np.zeros(5 * 60 * 8000, np.float32), 8000)
    with pytest.raises(AudioError, match="silent"):
        load_audio(path, max_seconds=600)
    with pytest.raises(AudioError, match="MB; the limit here is 0 MB"):
        load_audio(path, max_bytes=100)


@pytest.mark.parametrize("channels", [3, 5, 7])
def test_odd_channel_counts_are_mixed_down(tmp_path, channels):
    path = tmp_path / f"ch{channels}.wav"
    sf.write(path, tone(0.5, channels=channels), SAMPLE_RATE, subtype="PCM_16")
    audio = load_audio(path)
    assert audio.ndim == 1 and abs(len(audio) - SAMPLE_RATE // 2) <= 1 and 0.45 < np.abs(audio).max() <= 0.5 + 1e-3


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_samples(tmp_path, bad):
    samples = tone(0.5)
    samples[10] = bad
    path = tmp_path / "bad.wav"
    sf.write(path, samples, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or infinity"):
        load_audio(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=damaged_audio())
def test_damaged_files_decode_or_get_one_sentence(tmp_path, data):
    # The same inputs as the benchmark's longer fuzz run (bench/fuzz_audio.py).
    path = tmp_path / "upload.wav"
    path.write_bytes(data)
    try:
        audio = load_audio(path, max_seconds=600)
    except AudioError as exc:
        assert one_sentence(exc)
        return
    check_loaded(audio)


# ------------------------------------------------------------------ job requests from the page or the API

@pytest.fixture(scope="module")
def explorer(tmp_path_factory, tiny, monkeypatch_module):
    monkeypatch_module.setenv("ASRQ_DATA_DIR", str(tmp_path_factory.mktemp("asrq-data")))
    from engine.run_history import RunHistory
    from serving.model_cache import ModelCache
    from ui.handlers import Explorer

    root = tmp_path_factory.mktemp("hostile")
    return Explorer(models=ModelCache(loader=lambda name: tiny), history=RunHistory(root / "history.sqlite"),
                    artifact_root=root / "results")


GOOD = {"model_name": "tiny.en", "method": "rtn", "bits": 4, "group_size": 64, "alpha": 0.5, "seed": 0,
        "overrides": None}


@pytest.mark.parametrize("change,message", [
    ({"method": "nonsense"}, "Unknown method"),
    ({"method": ["rtn"]}, "Unknown method"),
    ({"bits": "four"}, "whole numbers"),
    ({"bits": 3.5}, "whole numbers"),
    ({"bits": None}, "whole numbers"),
    ({"bits": 1e300}, "whole numbers|bits must be one of"),
    ({"bits": 7}, "bits must be one of"),
    ({"group_size": 0}, "group size"),
    ({"seed": "x"}, "whole numbers"),
    ({"method": "qep", "alpha": 5}, "alpha"),
    ({"method": "qep", "alpha": float("nan")}, "alpha"),
    ({"overrides": 5}, "must be a list"),
    ({"overrides": {"bits": 3}}, "must be a list"),
    ({"overrides": [{"name": ["x"]}]}, "does not exist"),
    ({"overrides": [{"name": "model.encoder.layers.9.fc1"}]}, "does not exist"),
    ({"overrides": [{"name": "model.encoder.layers.0.fc1", "bits": 99}]}, "model.encoder.layers.0.fc1: bits"),
    ({"overrides": [{"name": "model.encoder.layers.0.fc1", "alpha": "x" * 10_000}]}, "alpha must be a number"),
    ({"overrides": [{"name": "model.encoder.layers.0.fc1", "action": "explode"}]}, "action must be one of"),
    # Rows the method cannot take are refused here, not in the worker after queueing.
    ({"overrides": [{"name": "model.encoder.layers.0.fc1", "bits": 1}]}, "integer grids need 2 bits"),
    ({"method": "nf4", "overrides": [{"name": "model.decoder.layers.0.fc2", "bits": 8}]}, "nf4 is a 4-bit format"),
    ({"method": "nf4", "bits": 8}, "nf4 is a 4-bit format"),
])
def test_bad_requests_get_one_sentence_and_start_nothing(explorer, change, message):
    with pytest.raises(UserError, match=message) as info:
        explorer._request(**(GOOD | change))
    assert one_sentence(info.value)
    assert explorer.jobs.worker.jobs_started == 0 and explorer.history.count() == 0
    assert not explorer.artifact_root.exists()


@pytest.mark.parametrize("text,message", [
    ("[" * 200_000 + "]" * 200_000, "characters long"),
    ("[" * 50_000 + "]" * 50_000, "nests too deeply"),
    ('[{"name": "model.encoder.layers.0.fc1", "bits": ' + "9" * 5000 + "}]", "not valid JSON"),
    ("{not json", "not valid JSON"),
    ('"a string"', "must be a list"),
    (json.dumps([{"name": "model.encoder.layers.0.fc1", "bits": 8}] * 1001), "1,001 rows"),
])
def test_layer_table_json_is_bounded_before_parsing(text, message):
    from engine.quant.layer_table import parse_overrides

    with pytest.raises(UserError, match=message) as info:
        parse_overrides(text)
    assert one_sentence(info.value)


def test_an_unknown_run_id_is_refused_before_any_transcription(explorer, monkeypatch):
    import gradio as gr

    decoded = []
    monkeypatch.setattr(explorer, "_audio", lambda path: decoded.append(path))
    for run_id in ("0123456789ab", "../../etc"):
        with pytest.raises(gr.Error, match="not here|not a quantized model id"):
            explorer.transcribe_audio("clip.flac", "tiny.en", run_id=run_id)
    assert decoded == []


def test_a_good_request_passes(explorer):
    request = explorer._request(**GOOD)
    assert request["settings"] == {"bits": 4, "group_size": 64} and request["safe_only"] is False



def test_wide_flac_is_refused_from_its_header_or_decoded_in_bounded_memory(tmp_path):
    import tracemalloc

    # The hostile review's file: 8 channels at FLAC's highest rate; refused before anything is decoded.
    wide = tmp_path / "wide.flac"
    with sf.SoundFile(wide, "w", samplerate=655_350, channels=8, format="FLAC", subtype="PCM_16") as f:
        f.write(np.zeros((655_350, 8), dtype=np.int16))
    with pytest.raises(AudioError, match="655,350 Hz") as refused:
        load_audio(wide, max_seconds=120)
    assert one_sentence(refused.value)
    # At an accepted rate: 20 s of 8 channels at 384 kHz is 61 M samples (246 MB as float32); decoded block by
    # block and mixed down as it goes, it never exists in full.
    rate, seconds = 384_000, 20
    allowed = tmp_path / "wide-384k.flac"
    block = (np.sin(np.arange(rate) * 2 * np.pi * 440 / rate)[:, None] * np.full(8, 8000)).astype(np.int16)
    with sf.SoundFile(allowed, "w", samplerate=rate, channels=8, format="FLAC", subtype="PCM_16") as f:
        for _ in range(seconds):
            f.write(block)
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        audio = load_audio(allowed, max_seconds=120)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(audio) == seconds * SAMPLE_RATE
    # The 16 kHz result is 1.3 MB; one block of 65,536 frames x 8 channels is 2 MB as float32.
    assert peak < 24 * 2**20, f"decoding peaked at {peak / 2**20:.0f} MB"
