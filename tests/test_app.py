"""The running app end to end through gradio_client: a sample clip, a recording-like upload, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from gradio_client import Client, handle_file

from engine.samples import sample_clips
from ui.app import build_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
    demo = build_app()
    _, url, _ = demo.launch(prevent_thread_lock=True, ssr_mode=False, quiet=True)
    client = Client(url, verbose=False)
    yield client
    client.close()
    demo.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_sample_clip_is_transcribed_with_wer(client):
    clip = next(c for c in sample_clips() if c.name == "demo-05")
    text, details = client.predict(handle_file(str(clip.path)), "tiny.en", clip.name, api_name="/transcribe")
    assert "quick brown fox" in text.lower()
    assert "WER" in details


def test_upload_at_44k_stereo_is_transcribed(client, tmp_path):
    from engine.audio import load_audio
    import soxr

    mono = load_audio(next(c for c in sample_clips() if c.name == "demo-05").path)
    stereo = np.stack([soxr.resample(mono, 16000, 44100)] * 2, axis=1)
    path = tmp_path / "upload.wav"
    sf.write(path, stereo, 44100, subtype="PCM_24")
    text, _ = client.predict(handle_file(str(path)), "tiny.en", None, api_name="/transcribe")
    assert "quick brown fox" in text.lower()


def test_non_audio_gets_a_message_and_the_server_keeps_serving(client, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    with pytest.raises(Exception, match="not a readable audio file"):
        client.predict(handle_file(str(bad)), "tiny.en", None, api_name="/transcribe")
    clip = next(c for c in sample_clips() if c.name == "demo-01")
    text, _ = client.predict(handle_file(str(clip.path)), "tiny.en", None, api_name="/transcribe")
    assert "quantization" in text.lower()
