"""Quantized results a server keeps: loaded models in memory (least recently used out), artifacts on disk.

The worker saves each result as an artifact folder named by its run id (serving/tasks.py); the server loads
it here for transcription. A run id typed by a visitor is checked before any file is touched.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from engine.errors import UserError
from engine.quant.artifacts import ArtifactError, load_quantized, prune_artifacts, verify_artifact
from engine.whisper.models import LoadedModel
from serving.memory import release_memory
from serving.model_cache import ModelCache

RUN_ID = re.compile(r"[0-9a-f]{12}")


def current_shape(summary: dict | None) -> bool:
    """A run summary as this version writes it (an older one nested its sizes: such a run is done again)."""
    return bool(summary) and "size_bytes" in summary


def saved_summary(folder: Path) -> dict | None:
    """The page's summary saved with a finished run, when the folder is whole (weights hash checked) and of this
    version; None otherwise. Marks the folder recently used (the last to be pruned)."""
    if not folder.is_dir():
        return None
    try:
        summary = verify_artifact(folder).get("app_summary")
    except ArtifactError:
        return None
    if not current_shape(summary):
        return None
    os.utime(folder)
    return summary


class ResultStore:
    """At most ``kept_loaded`` quantized models in memory (one load in flight per run) and ``kept_saved``
    artifact folders under ``root``."""

    def __init__(self, root: Path, kept_loaded: int = 4, kept_saved: int = 64):
        self.root = Path(root)
        self.kept_loaded = kept_loaded
        self.kept_saved = kept_saved
        # run id -> (model, summary); a room transcribing with one run at once shares one load of it
        self._loaded: ModelCache[tuple[LoadedModel, dict]] = ModelCache(kept_loaded, self._load, release_memory)

    def _load(self, run_id: str) -> tuple[LoadedModel, dict]:
        loaded, meta = load_quantized(self.root / run_id)
        return loaded, meta.get("app_summary", {})

    def remember(self, run_id: str, loaded: LoadedModel, summary: dict) -> None:
        self._loaded.put(run_id, (loaded, summary))

    def add_finished(self, summary: dict) -> None:
        """A run the worker just finished (or answered from its saved artifact): load it, prune old folders."""
        loaded, _ = self._loaded.get(summary["run_id"])  # a repeat of a run still in memory: no second copy
        self.remember(summary["run_id"], loaded, summary)
        prune_artifacts(self.root, self.kept_saved, protect=frozenset(rid for rid, _ in self._loaded.items()))

    def model(self, run_id: str) -> LoadedModel:
        """The loaded model of a run: from memory, else from its saved artifact; UserError when there is none."""
        kept = self._loaded.peek(run_id)
        if kept is not None:
            return kept[0]
        if not RUN_ID.fullmatch(run_id):
            raise UserError("That is not a quantized model id from this page.")
        if not (self.root / run_id).is_dir():
            raise UserError("That quantized model is not here (any more); press Quantize again.")
        return self._loaded.get(run_id)[0]

    def finished_summary(self, run_id: str) -> dict | None:
        """The summary of a run finished before (in memory, or saved here and whole), else None: asking for it
        again needs no job."""
        kept = self._loaded.peek(run_id)
        if kept is not None and current_shape(kept[1]):
            return kept[1]
        return saved_summary(self.root / run_id) if RUN_ID.fullmatch(run_id) else None

    def summaries(self, except_run: str | None = None) -> list[dict]:
        """Summaries of the runs in memory, most recent first."""
        return [summary for rid, (_, summary) in self._loaded.items() if rid != except_run]
