"""Word-level differences between two transcripts, for highlighting on the page."""

from __future__ import annotations

import difflib


def word_diff(reference: str, hypothesis: str) -> list[tuple[str, str | None]]:
    """(word, tag) pairs walking the hypothesis, with dropped reference words inserted where they were lost.

    Tags: None (same), "changed" (substituted in the hypothesis), "extra" (inserted), "missing" (a reference
    word the hypothesis lost, shown struck through by the UI).
    """
    ref, hyp = reference.split(), hypothesis.split()
    norm = lambda words: [w.lower().strip(".,!?;:\"'") for w in words]  # noqa: E731 - tiny local key
    out: list[tuple[str, str | None]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=norm(ref), b=norm(hyp), autojunk=False).get_opcodes():
        if op == "equal":
            out += [(w, None) for w in hyp[j1:j2]]
        elif op == "replace":
            out += [(w, "missing") for w in ref[i1:i2]] + [(w, "changed") for w in hyp[j1:j2]]
        elif op == "delete":
            out += [(w, "missing") for w in ref[i1:i2]]
        else:
            out += [(w, "extra") for w in hyp[j1:j2]]
    return out
