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


def test_bench_pairs_fade_with_each_row_by_draw_and_its_interval_excludes_zero_only_for_a_real_shift():
    from bench.methods import mean_interval, paired_lines

    assert mean_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)  # no spread over the draws: no width
    mean, low, high = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0 and low < 3.0 < high and abs((high - mean) - 2.78 * (2.5 ** 0.5) / 5 ** 0.5) < 1e-9

    def rows(label, wers):
        return [{"label": label, "seed": seed, "wer": w} for seed, w in enumerate(wers)]

    groups = {("fade 4b", "real"): rows("fade 4b", [0.14, 0.15, 0.13, 0.16, 0.14]),
              ("gptq 4b", "real"): rows("gptq 4b", [0.16, 0.17, 0.15, 0.18, 0.17]),  # 2-3 points worse each draw
              ("qep a=0.25 4b", "real"): rows("qep a=0.25 4b", [0.15, 0.14, 0.14, 0.15, 0.15]),
              ("gptq 3b", "real"): rows("gptq 3b", [0.3] * 5),  # other bits: never paired with a 4-bit row
              ("gptq 4b", "sample"): rows("gptq 4b", [0.2] * 5)}  # other source: likewise
    lines = paired_lines(groups)
    assert len(lines) == 2 and lines[0].startswith("- fade 4b minus gptq 4b, real: -2.20 (")
    low, high = (float(x) for x in lines[0].split("(")[1].split(";")[0].split(" to "))
    assert high < 0  # a consistent shift: the interval excludes 0
    low, high = (float(x) for x in lines[1].split("(")[1].split(";")[0].split(" to "))
    assert low < 0 < high  # a difference that changes sign between draws: it does not
