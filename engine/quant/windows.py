"""Calibration recordings laid out in Whisper's 30 s encoder windows, and the moments' two halves.

Whisper encodes every input as a 30 s window (1500 encoder frames): a 5 s recording leaves 83% of its window
padding, and the calibration pass's time grows with windows x 1500 frames. Recordings of one half placed back
to back in a window (a short silence between them, their transcripts joined) give the pass fewer windows for
the same speech, as Whisper's own training windows hold several sentences; what padding is left after them
still enters the moments. Packing never mixes the halves, so a speaker-disjoint split stays disjoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.errors import UserError

N_SPLITS = 2  # moments are kept in two clip-disjoint halves for held-out checks
WINDOW_SECONDS = 30.0  # Whisper's encoder window
GAP_SECONDS = 0.5  # silence between two recordings sharing a window
# The default: 32 real recordings of ~6 s in 9-10 windows instead of 32, the FADE 4-bit pass about 2x faster with
# the same WER over seeds and a lower token KL (docs/methods.md, bench/results/pass_speed.md).
RECORDINGS_PER_WINDOW = 4


def speaker_halves(n_clips: int, speakers: Sequence[str] = ()) -> list[int]:
    """Which half of the moments each recording feeds.

    With more than one speaker the halves are speaker-disjoint (speakers dealt largest first to the half
    with fewer recordings), so a held-out check fits on some voices and is scored on others: a correction
    that only suits one voice fails it. With one speaker (or none known) recordings alternate, so each half
    has every kind of recording."""
    if len(set(speakers)) < N_SPLITS or len(speakers) != n_clips:
        return [i % N_SPLITS for i in range(n_clips)]
    counts: dict[str, int] = {}
    for s in speakers:
        counts[s] = counts.get(s, 0) + 1
    half_of, sizes = {}, [0] * N_SPLITS
    for speaker in sorted(counts, key=lambda s: (-counts[s], s)):
        half = min(range(N_SPLITS), key=lambda h: (sizes[h], h))
        half_of[speaker] = half
        sizes[half] += counts[speaker]
    return [half_of[s] for s in speakers]


@dataclass(frozen=True)
class Windows:
    """What the pass encodes: one audio (16 kHz float32), transcript and half per window."""

    audios: list[np.ndarray]
    transcripts: list[str]
    halves: tuple[int, ...]


def pack_windows(audios: Sequence[np.ndarray], transcripts: Sequence[str], halves: Sequence[int],
                 per_window: int, sample_rate: int) -> Windows:
    """Up to ``per_window`` recordings of one half per window, in the given order, as long as they fit in 30 s
    with GAP_SECONDS between them (a longer recording keeps a window to itself). per_window 1: as given."""
    if per_window < 1:
        raise UserError(f"Calibration clips per window must be 1 or more, not {per_window}.")
    if not len(audios) == len(transcripts) == len(halves):
        raise ValueError("one transcript and one half per recording")
    if per_window == 1:
        return Windows(list(audios), list(transcripts), tuple(halves))
    gap = np.zeros(round(GAP_SECONDS * sample_rate), dtype=np.float32)
    limit = round(WINDOW_SECONDS * sample_rate)
    packed_audios, packed_texts, packed_halves = [], [], []
    for half in sorted(set(halves)):
        members = [i for i, h in enumerate(halves) if h == half]
        window: list[int] = []
        for i in members + [None]:  # None closes the last window
            length = sum(len(audios[j]) for j in window) + len(gap) * len(window)
            if window and (i is None or len(window) == per_window or length + len(audios[i]) > limit):
                pieces = [piece for j in window for piece in (gap, np.asarray(audios[j], dtype=np.float32))][1:]
                packed_audios.append(np.concatenate(pieces))
                packed_texts.append(" ".join(transcripts[j].strip() for j in window))
                packed_halves.append(half)
                window = []
            if i is not None:
                window.append(i)
    return Windows(packed_audios, packed_texts, tuple(packed_halves))
