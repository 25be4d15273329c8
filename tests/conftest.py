"""Shared fixtures: the real tiny.en model and the real speech in ../shared/speech."""

from __future__ import annotations

import os

import pytest

from tests.helpers import speech_dir


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Converted models go to a per-session cache unless the developer points ASRQ_CACHE_DIR elsewhere."""
    if "ASRQ_CACHE_DIR" not in os.environ:
        os.environ["ASRQ_CACHE_DIR"] = str(tmp_path_factory.mktemp("asrq-cache"))


@pytest.fixture(scope="session")
def tiny():
    from engine.whisper.models import load_model

    return load_model("tiny.en")


@pytest.fixture(scope="session")
def test_other():
    return speech_dir("librispeech-test-other")


@pytest.fixture(scope="module")
def monkeypatch_module():
    """Environment changes for one test module, undone after it (nothing leaks into the next module)."""
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()
