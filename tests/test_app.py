"""The running app end to end through gradio_client: a sample clip, a recording-like upload, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from gradio_client import Client, handle_file

from engine.speech.samples import sample_clips
from ui.app import build_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
    monkeypatch_module.setenv("ASRQ_DATA_DIR", str(tmp_path_factory.mktemp("asrq-data")))  # history, results
    demo = build_app()
    _, url, _ = demo.launch(prevent_thread_lock=True, ssr_mode=False, quiet=True)
    client = Client(url, verbose=False)
    yield client
    client.close()
    demo.close()


def test_quantize_then_transcribe_side_by_side(client):
    info = client.predict("tiny.en", "rtn", 4, 64, 0.5, 0, "", api_name="/quantize")
    assert info["size_bytes"] < info["fp32_size_bytes"] / 2.5 and len(info["per_layer"]) == 64
    assert info["demo_wer"] < 0.3  # scored on the demo clips in the worker process
    assert info["eval_set"] == "10 synthetic demo clips, 2 voices"
    low, high = info["delta_ci95"]
    assert low <= info["delta_wer"] <= high and info["wer_ci95"][0] <= info["demo_wer"] <= info["wer_ci95"][1]
    assert "95% interval" in info["status"] and "on these 10 clips" in info["status"]
    clip = next(c for c in sample_clips() if c.name == "demo-05")
    fp, diff, details = client.predict(handle_file(str(clip.path)), "tiny.en", clip.name, info["run_id"],
                                       api_name="/transcribe")
    assert "quick brown fox" in fp.lower()
    quantized = "".join(d["token"] for d in diff if d["class_or_confidence"] != "missing")
    assert "fox" in quantized.lower()
    assert "WER full precision" in details and "quantized:" in details
    # The worker's transcripts of the demo clips it scored the run on answer the page: no model call.
    assert "a shared answer" in next(line for line in details.splitlines() if line.startswith("Quantized"))


def test_quantize_rejects_an_impossible_layer_setting(client):
    bad = '[{"name": "model.decoder.layers.0.fc1", "bits": 7}]'
    with pytest.raises(Exception, match="model.decoder.layers.0.fc1"):
        client.predict("tiny.en", "rtn", 4, 64, 0.5, 0, bad, api_name="/quantize")


def test_upload_at_44k_stereo_is_transcribed(client, tmp_path):
    from engine.speech.audio import load_audio
    import soxr

    mono = load_audio(next(c for c in sample_clips() if c.name == "demo-05").path)
    stereo = np.stack([soxr.resample(mono, 16000, 44100)] * 2, axis=1)
    path = tmp_path / "upload.wav"
    sf.write(path, stereo, 44100, subtype="PCM_24")
    text, _, _ = client.predict(handle_file(str(path)), "tiny.en", None, "", api_name="/transcribe")
    assert "quick brown fox" in text.lower()


def test_non_audio_gets_a_message_and_the_server_keeps_serving(client, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    with pytest.raises(Exception, match="not a readable audio file"):
        client.predict(handle_file(str(bad)), "tiny.en", None, "", api_name="/transcribe")
    clip = next(c for c in sample_clips() if c.name == "demo-01")
    text, _, _ = client.predict(handle_file(str(clip.path)), "tiny.en", None, "", api_name="/transcribe")
    assert "quantization" in text.lower()


def test_a_folder_of_real_clips_is_scored_and_named(client):
    from tests.helpers import speech_dir

    folder = speech_dir("librispeech-dev-clean-misc")
    info = client.predict("tiny.en", "rtn", 8, 64, 0.5, 0, "", str(folder), api_name="/quantize")
    assert info["eval_set"] == f"5 clips from {folder}"
    assert f"WER on 5 clips from {folder}" in info["status"] and "on these 5 clips" in info["status"]
    assert info["demo_wer"] < 0.3  # 8-bit RTN on real read speech
    with pytest.raises(Exception, match="does not exist on this server"):
        client.predict("tiny.en", "rtn", 8, 64, 0.5, 0, "", "/no/such/folder", api_name="/quantize")
