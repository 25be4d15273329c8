"""Quantized results a server keeps: loaded models in memory (least recently used out), artifacts on disk.

The worker saves each result as an artifact folder named by its run id (serving/tasks.py); the server loads
it here for transcription. A run id typed by a visitor is checked before any file is touched.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

from engine.errors import UserError
from engine.quant.artifacts import ArtifactError, load_quantized, prune_artifacts, verify_artifact
from engine.whisper.models import LoadedModel
from serving.memory import release_memory

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
    """At most ``kept_loaded`` quantized models in memory and ``kept_saved`` artifact folders under ``root``."""

    def __init__(self, root: Path, kept_loaded: int = 4, kept_saved: int = 64):
        self.root = Path(root)
        self.kept_loaded = kept_loaded
        self.kept_saved = kept_saved
        self._loaded: OrderedDict[str, tuple[LoadedModel, dict]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, run_id: str, loaded: LoadedModel, summary: dict) -> None:
        with self._lock:
            self._loaded[run_id] = (loaded, summary)
            self._loaded.move_to_end(run_id)
            evicted = len(self._loaded) > self.kept_loaded
            while len(self._loaded) > self.kept_loaded:
                self._loaded.popitem(last=False)
        if evicted:
            release_memory()

    def add_finished(self, summary: dict) -> None:
        """A run the worker just finished (or answered from its saved artifact): load it, prune old folders."""
        with self._lock:  # a repeat of a run still in memory: no second copy of the model
            kept = self._loaded.get(summary["run_id"])
        self.remember(summary["run_id"], kept[0] if kept else load_quantized(summary["artifact"])[0], summary)
        with self._lock:
            in_memory = frozenset(self._loaded)
        prune_artifacts(self.root, self.kept_saved, protect=in_memory)

    def model(self, run_id: str) -> LoadedModel:
        """The loaded model of a run: from memory, else from its saved artifact; UserError when there is none."""
        with self._lock:
            if run_id in self._loaded:
                self._loaded.move_to_end(run_id)
                return self._loaded[run_id][0]
        if not RUN_ID.fullmatch(run_id):
            raise UserError("That is not a quantized model id from this page.")
        folder = self.root / run_id
        if not folder.is_dir():
            raise UserError("That quantized model is not here (any more); press Quantize again.")
        loaded, meta = load_quantized(folder)
        self.remember(run_id, loaded, meta.get("app_summary", {}))
        return loaded

    def finished_summary(self, run_id: str) -> dict | None:
        """The summary of a run finished before (in memory, or saved here and whole), else None: asking for it
        again needs no job."""
        with self._lock:
            kept = self._loaded.get(run_id)
        if kept is not None and current_shape(kept[1]):
            return kept[1]
        return saved_summary(self.root / run_id) if RUN_ID.fullmatch(run_id) else None

    def summaries(self, except_run: str | None = None) -> list[dict]:
        """Summaries of the runs in memory, most recent first."""
        with self._lock:
            return [s for rid, (_, s) in reversed(self._loaded.items()) if rid != except_run]
