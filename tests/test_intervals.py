"""Bootstrap intervals of WER and of the paired difference to full precision (engine/speech/intervals.py)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.speech.intervals import Interval, describe_delta, paired_delta, wer_interval


def test_a_model_against_itself_has_a_zero_interval():
    rng = np.random.default_rng(1)
    words = rng.integers(5, 30, size=40)
    errors = rng.binomial(words, 0.15)
    delta, ci = paired_delta([errors], errors, words)
    assert delta == 0 and ci == Interval(0.0, 0.0)
    delta, ci = paired_delta([errors, errors, errors], errors, words)  # several seeds, all identical
    assert delta == 0 and ci == Interval(0.0, 0.0)


def test_a_known_shift_gives_an_interval_that_excludes_zero():
    rng = np.random.default_rng(2)
    words = rng.integers(5, 30, size=50)
    fp = rng.binomial(words, 0.12)
    worse = fp + rng.binomial(words, 0.05)  # about five points more on every clip
    delta, ci = paired_delta([worse], fp, words)
    assert 0.02 < ci.low < delta < ci.high < 0.08
    assert ci.excludes_zero()
    assert describe_delta(delta, ci, 50).endswith("worse than full precision on these 50 clips")


def test_noise_without_a_shift_is_not_distinguishable():
    rng = np.random.default_rng(3)
    words = rng.integers(5, 30, size=10)
    fp = rng.binomial(words, 0.15)
    other = np.maximum(fp + rng.integers(-1, 2, size=10), 0)
    delta, ci = paired_delta([other], fp, words)
    assert ci.low <= 0 <= ci.high
    assert "not distinguishable from full precision on these 10 clips" in describe_delta(delta, ci, 10)


def test_seeds_widen_the_interval_when_they_disagree():
    rng = np.random.default_rng(4)
    words = rng.integers(5, 30, size=50)
    fp = rng.binomial(words, 0.12)
    steady = [fp + 1] * 4
    spread = [fp, fp + 2, fp, fp + 2]  # same mean difference, different runs
    d1, ci1 = paired_delta(steady, fp, words)
    d2, ci2 = paired_delta(spread, fp, words)
    assert d1 == pytest.approx(d2)
    assert ci2.high - ci2.low > ci1.high - ci1.low


def test_wer_interval_covers_the_corpus_wer_and_is_seeded():
    rng = np.random.default_rng(5)
    words = rng.integers(5, 30, size=50)
    errors = rng.binomial(words, 0.2)
    ci = wer_interval(errors, words)
    assert ci.low < errors.sum() / words.sum() < ci.high
    assert wer_interval(errors, words, seed=0) == ci and wer_interval(errors, words, seed=1) != ci


def test_paired_delta_refuses_mismatched_utterances():
    with pytest.raises(ValueError, match="same utterances"):
        paired_delta([[1, 2, 3]], [1, 2], [5, 5])
