"""A non-editable install has what the code looks for at run time: the sample clips and the method notes."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from tests.helpers import REPO


@pytest.mark.slow
def test_the_wheel_carries_the_sample_clips_and_the_method_notes(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        notes = archive.read("ui/methods.md").decode()
    clips = sorted(n for n in names if n.startswith("engine/speech/sample_audio/"))
    assert "engine/speech/sample_audio/refs.tsv" in names
    assert len([n for n in clips if n.endswith(".flac")]) == len(list((REPO / "sample_audio").glob("*.flac")))
    assert notes == (REPO / "docs" / "methods.md").read_text()  # the file itself, not the link
    assert {"engine/quant/registry.py", "serving/job_queue.py", "ui/sections/quantize.py"} <= names
