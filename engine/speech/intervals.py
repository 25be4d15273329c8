"""Bootstrap confidence intervals for WER, alone and as a paired difference to full precision.

Corpus WER is total errors / total reference words, so a bootstrap replicate resamples utterances (with
replacement) and recomputes that ratio. A quantized model and full precision are scored on the same
utterances, so their difference is paired: one replicate draws one set of utterances for both, which
cancels the clip-to-clip spread that both models share. With several calibration seeds a replicate also
resamples the seeds' runs, so the interval covers the spread between calibration draws too.
Percentile intervals, 2000 replicates, seeded: the same inputs give the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

N_REPLICATES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def to_list(self) -> list[float]:
        return [self.low, self.high]

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _percentiles(samples: np.ndarray) -> Interval:
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return Interval(float(low), float(high))


def wer_interval(errors: Sequence[int], words: Sequence[int], seed: int = 0,
                 replicates: int = N_REPLICATES) -> Interval:
    """95% interval of corpus WER. errors, words: (utterances,) per-utterance counts."""
    errors, words = np.asarray(errors, dtype=float), np.asarray(words, dtype=float)
    if words.sum() == 0:
        return Interval(0.0, 0.0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(words), size=(replicates, len(words)))
    totals = np.maximum(words[idx].sum(axis=1), 1)
    return _percentiles(errors[idx].sum(axis=1) / totals)


def paired_delta(errors_runs: Sequence[Sequence[int]], errors_reference: Sequence[int], words: Sequence[int],
                 seed: int = 0, replicates: int = N_REPLICATES) -> tuple[float, Interval]:
    """WER difference (runs minus reference, as a fraction) and its 95% interval.

    errors_runs: (runs, utterances) errors of each seed's run; errors_reference, words: (utterances,), the
    full-precision model's errors on the same utterances in the same order."""
    runs = np.atleast_2d(np.asarray(errors_runs, dtype=float))
    ref, words = np.asarray(errors_reference, dtype=float), np.asarray(words, dtype=float)
    if runs.shape[1] != len(ref) or len(ref) != len(words):
        raise ValueError(f"paired_delta needs the same utterances: runs {runs.shape}, reference {len(ref)}, "
                         f"words {len(words)}")
    if words.sum() == 0:
        return 0.0, Interval(0.0, 0.0)
    diff = runs - ref  # (runs, utterances)
    point = float(diff.mean(axis=0).sum() / words.sum())
    rng = np.random.default_rng(seed)
    utt = rng.integers(0, len(words), size=(replicates, len(words)))
    pick = rng.integers(0, len(runs), size=(replicates, len(runs)))
    # Mean over the resampled runs of each resampled utterance's difference, summed over utterances.
    per_run_utt = diff[pick[:, :, None], utt[:, None, :]]  # (replicates, runs, utterances)
    totals = np.maximum(words[utt].sum(axis=1), 1)
    return point, _percentiles(per_run_utt.mean(axis=1).sum(axis=1) / totals)


def describe_delta(delta: float, interval: Interval, n_clips: int, set_name: str = "clips") -> str:
    """One sentence for the page, in WER points."""
    verdict = ("not distinguishable from full precision" if not interval.excludes_zero()
               else "worse than full precision" if interval.low > 0 else "better than full precision")
    return (f"{100 * delta:+.1f} points, 95% interval {100 * interval.low:+.1f} to {100 * interval.high:+.1f}: "
            f"{verdict} on these {n_clips} {set_name}")
