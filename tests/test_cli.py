"""The asrq command: exit codes and one-sentence errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True)


def test_models_lists_the_registry():
    out = run("models", "--json")
    assert out.returncode == 0
    assert {"tiny.en", "base", "small"} <= {row["name"] for row in json.loads(out.stdout)}


@pytest.mark.parametrize(
    "args,expected",
    [
        (["transcribe", "no-such-file.wav"], "does not exist"),
        (["transcribe", "--model", "no-such-model", "sample_audio/demo-01.flac"], "not available"),
        (["eval", "--data", "no-such-folder"], "does not exist"),
    ],
)
def test_user_errors_exit_2_with_one_sentence(args, expected):
    out = run(*args)
    assert out.returncode == 2
    assert expected in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_record_without_sounddevice_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import now raises ImportError
    assert main(["record", "--seconds", "1", str(tmp_path / "x.wav")]) == 2
    assert "sounddevice" in capsys.readouterr().err


def test_record_without_portaudio_says_what_to_install(monkeypatch, capsys, tmp_path):
    class MissingPortAudio:
        def find_spec(self, name, path=None, target=None):
            if name == "sounddevice":
                raise OSError("PortAudio library not found")
            return None

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [MissingPortAudio(), *sys.meta_path])
    assert main(["record", "--seconds", "1", str(tmp_path / "x.wav")]) == 2
    assert "PortAudio" in capsys.readouterr().err


@pytest.mark.slow
def test_transcribe_prints_the_text():
    out = run("transcribe", "sample_audio/demo-05.flac")
    assert out.returncode == 0, out.stderr
    assert "quick brown fox" in out.stdout.lower()
