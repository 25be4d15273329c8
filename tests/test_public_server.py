"""A public server through gradio_client: only listed models, capped uploads, a bounded waiting room with one
job per visitor, and it keeps serving."""

from __future__ import annotations

import time

import numpy as np
import pytest
import soundfile as sf
from gradio_client import Client, handle_file

from engine.run_history import RunHistory
from engine.speech.samples import sample_clips
from serving.policy import ServingPolicy
from ui.app import build_app, launch_options
from ui.handlers import Explorer

pytestmark = pytest.mark.slow

UPLOAD_CAP = 400_000  # bytes


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("public")
    policy = ServingPolicy.public_defaults(max_waiting_jobs=2, max_upload_bytes=UPLOAD_CAP)
    explorer = Explorer(policy=policy, history=RunHistory(root / "history.sqlite"), artifact_root=root / "results")
    demo = build_app(explorer)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(explorer))
    yield explorer, url
    demo.close()
    explorer.close()


def demo_clip(name: str = "demo-05"):
    return next(c for c in sample_clips() if c.name == name)


def test_only_listed_models_are_loaded(server):
    _, url = server
    client = Client(url, verbose=False)
    # The page's model dropdown refuses values outside its choices; the quantize API checks the policy.
    with pytest.raises(Exception, match="not in the list of choices"):
        client.predict(handle_file(str(demo_clip().path)), "/etc", None, "", api_name="/transcribe")
    with pytest.raises(Exception, match="only loads its listed models"):
        client.predict("../../models/x", "rtn", 4, 64, 0.5, 0, "", api_name="/quantize")


def test_uploads_over_the_cap_are_refused(server, tmp_path):
    _, url = server
    client = Client(url, verbose=False)
    big = tmp_path / "long.wav"
    sf.write(big, np.random.default_rng(0).uniform(-0.3, 0.3, 16000 * 20).astype(np.float32), 16000)  # 1.3 MB
    with pytest.raises(Exception, match="(?i)file size|too large|exceeds"):
        client.predict(handle_file(str(big)), "tiny.en", None, "", api_name="/transcribe")
    text, _, _ = client.predict(handle_file(str(demo_clip().path)), "tiny.en", None, "", api_name="/transcribe")
    assert "quick brown fox" in text.lower()


def test_waiting_room_is_bounded_with_one_job_per_visitor(server):
    explorer, url = server
    alice, bob, carol = (Client(url, verbose=False) for _ in range(3))
    first = alice.submit("tiny.en", "rtn", 4, 64, 0.5, 0, "", api_name="/quantize")
    deadline = time.monotonic() + 60
    while explorer.jobs.occupied < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(Exception, match="already have a job"):
        alice.predict("tiny.en", "rtn", 8, 64, 0.5, 0, "", api_name="/quantize")
    second = bob.submit("tiny.en", "rtn", 8, 64, 0.5, 0, "", api_name="/quantize")
    while explorer.jobs.occupied < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(Exception, match="busy .* try again"):
        carol.predict("tiny.en", "rtn", 6, 64, 0.5, 0, "", api_name="/quantize")
    assert first.result(timeout=300)["size_bytes"] < second.result(timeout=300)["size_bytes"]
    assert explorer.history.count() == 2 and explorer.jobs.occupied == 0
    # Afterwards everyone is served again.
    assert carol.predict("tiny.en", "rtn", 6, 64, 0.5, 0, "", api_name="/quantize")["run_id"]


def test_a_visitor_cannot_point_the_scoring_at_a_server_folder(server):
    explorer, _ = server
    assert explorer.eval_dir("/etc") is None  # a typed folder is ignored: the owner's ASRQ_EVAL_DIR (unset) rules
    assert explorer.eval_dir("/no/such/folder") is None
