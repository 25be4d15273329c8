"""Data folders, scoring, calibration split, and the WER ceiling of tiny.en on real test-other clips."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from engine.errors import DatasetError
from engine.evaluate import TextScorer, load_dataset, mean_std, split_calibration


def make_clip(path):
    sf.write(path, (0.3 * np.sin(np.arange(1600) / 5)).astype(np.float32), 16000)


def test_refs_tsv_with_header_extra_columns_and_stems(tmp_path):
    make_clip(tmp_path / "a.wav")
    make_clip(tmp_path / "b.flac")
    (tmp_path / "refs.tsv").write_text("filename\ttranscript\tsource\na.wav\tHello there\tx\nb\tGood night\ty\n")
    utts = load_dataset(tmp_path)
    assert [(u.id, u.reference) for u in utts] == [("a", "Hello there"), ("b", "Good night")]


def test_librispeech_layout(tmp_path):
    chapter = tmp_path / "1" / "2"
    chapter.mkdir(parents=True)
    make_clip(chapter / "1-2-0000.flac")
    make_clip(chapter / "1-2-0001.flac")
    (chapter / "1-2.trans.txt").write_text("1-2-0000 HELLO WORLD\n1-2-0001 SECOND LINE\n")
    utts = load_dataset(tmp_path)
    assert [u.reference for u in utts] == ["HELLO WORLD", "SECOND LINE"]


def test_missing_audio_and_empty_folders_are_clear(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no refs.tsv"):
        load_dataset(tmp_path)
    make_clip(tmp_path / "a.wav")
    (tmp_path / "refs.tsv").write_text("a.wav\tfine\nghost.wav\tmissing\n")
    with pytest.raises(DatasetError, match="ghost.wav"):
        load_dataset(tmp_path)


def test_scorer_normalizes_before_counting():
    scorer = TextScorer()
    wer, cer = scorer.score(["Mr. Smith paid ten dollars!"], ["mister smith paid $10"])
    assert wer == 0 and cer == 0
    wer, _ = scorer.score(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert wer == pytest.approx(1 / 6)


def test_calibration_split_is_seeded_and_disjoint():
    items = list(range(50))
    cal0, ev0 = split_calibration(items, 10, seed=0)
    cal0b, _ = split_calibration(items, 10, seed=0)
    cal1, _ = split_calibration(items, 10, seed=1)
    assert cal0 == cal0b and cal0 != cal1
    assert not set(cal0) & set(ev0) and len(cal0) + len(ev0) == 50
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(np.sqrt(2)))


@pytest.mark.slow
def test_cli_eval_wer_ceiling_on_test_other(test_other):
    """Measured reference: about 13-14% WER for tiny.en on these 50 clips; the ceiling is 15.5%."""
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "eval", "--model", "tiny.en", "--data", str(test_other), "--json"],
        capture_output=True, text=True, check=True, env=os.environ,
    )
    result = json.loads(out.stdout)
    assert result["n_utterances"] == 50
    assert result["wer"] <= 0.155, result
    assert 0 < result["cer"] < result["wer"]
    assert 0 < result["rtf"] < 1
