"""Shared fixtures: the real tiny.en model and the real speech in ../shared/speech."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_SPEECH = REPO.parent / "shared" / "speech"


def speech_dir(name: str) -> Path:
    """A folder of ../shared/speech; under CI its absence is a failure, elsewhere a skip."""
    folder = SHARED_SPEECH / name
    if not folder.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{folder} is missing: CI must have ../shared/speech beside the clone")
        pytest.skip(f"{folder} is not here")
    return folder


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Converted models go to a per-session cache unless the developer points ASRQ_CACHE_DIR elsewhere."""
    if "ASRQ_CACHE_DIR" not in os.environ:
        os.environ["ASRQ_CACHE_DIR"] = str(tmp_path_factory.mktemp("asrq-cache"))


@pytest.fixture(scope="session")
def tiny():
    from engine.models import load_model

    return load_model("tiny.en")


@pytest.fixture(scope="session")
def test_other():
    return speech_dir("librispeech-test-other")
