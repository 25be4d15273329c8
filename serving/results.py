"""Quantized results a server keeps: loaded models in memory (least recently used out), artifacts on disk.

The worker saves each result as an artifact folder named by its run id (serving/tasks.py); the server loads
it here for transcription. A run id typed by a visitor is checked before any file is touched.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from engine.errors import UserError
from engine.quant.artifacts import ArtifactError, load_quantized, prune_artifacts, verify_artifact
from engine.whisper.decoding_layout import lay_out_for_decoding
from engine.whisper.models import LoadedModel
from serving.memory import release_memory
from serving.model_cache import ModelCache

RUN_ID = re.compile(r"[0-9a-f]{12}")
log = logging.getLogger(__name__)


class TensorPool:
    """Parameters equal in several loaded runs held once. Every run of one model stores what it left
    unquantized in float16 alike (the token embedding, also the output layer: half of tiny.en), so a server
    keeping a room's runs in memory need not hold that half once per run. The offline models' weights are
    float16 values (CTranslate2's), so those parameters equal the full-precision model's too."""

    def __init__(self) -> None:
        self._kept: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # (name, shape, dtype) -> parameter
        self._lock = threading.Lock()

    def share(self, model: nn.Module) -> int:
        """Point model's parameters at equal ones kept from runs still in memory; returns the bytes saved."""
        saved = 0
        with self._lock, torch.no_grad():
            for name, param in model.named_parameters():  # a tied weight once: its modules share the parameter
                if param.numel() == 0:  # a compact run's quantized layer, held as codes
                    continue
                key = (name, tuple(param.shape), param.dtype)
                kept = self._kept.get(key)
                if kept is not None and kept.data_ptr() != param.data_ptr() and torch.equal(kept, param):
                    param.data = kept.data
                    saved += param.numel() * param.element_size()
                if kept is None or kept.data_ptr() == param.data_ptr():
                    # the newest run holds the pool's reference: the last of the runs in memory to be evicted
                    self._kept[key] = param
        return saved


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

    def __init__(self, root: Path, kept_loaded: int = 4, kept_saved: int = 64,
                 base_model: Callable[[str], LoadedModel | None] | None = None):
        self.root = Path(root)
        # model name -> the full-precision model if the server holds it (never loads): a run shares its
        # unquantized parameters with it, so even the first run in memory adds only what it quantized
        self._base_model = base_model
        self.kept_loaded = kept_loaded
        self.kept_saved = kept_saved
        # run id -> (model, summary); a room transcribing with one run at once shares one load of it
        self._loaded: ModelCache[tuple[LoadedModel, dict]] = ModelCache(kept_loaded, self._load, release_memory)
        self._tensors = TensorPool()
        self._tokenizers: dict = {}  # tokenizer file digest -> WhisperTokens: one a model, shared by its runs
        # run id -> summary of the runs finished or answered lately, most recent last: a finished run is loaded
        # only when a transcription needs its model (most of a room's demo clicks are answered from kept
        # transcripts), so the summaries are kept apart from the loaded models.
        self._recent: OrderedDict[str, dict] = OrderedDict()
        self._recent_lock = threading.Lock()

    def _load(self, run_id: str) -> tuple[LoadedModel, dict]:
        # as codes: a kept run holds ~10 MB instead of ~66 MB of float weights (unpacked per transcription)
        loaded, meta = load_quantized(self.root / run_id, compact=True, tokenizers=self._tokenizers)
        # it only transcribes here; laid out as the base model's before sharing: the pool's equality check of
        # the output layer reads both alike (one row-major, the other column-major took it 0.2 s)
        lay_out_for_decoding(loaded.model)
        base = self._base_model(meta["model"]["name"]) if self._base_model else None
        if base is not None:
            self._tensors.share(base.model)
        saved = self._tensors.share(loaded.model)
        log.info("run %s loaded; %.0f MB of its parameters shared with runs in memory", run_id, saved / 2**20)
        return loaded, meta.get("app_summary", {})

    def add_finished(self, summary: dict) -> None:
        """A run the worker just finished (or answered from its saved artifact): remember its summary (its model
        is loaded when a transcription first needs it), prune old folders."""
        with self._recent_lock:
            self._recent[summary["run_id"]] = summary
            self._recent.move_to_end(summary["run_id"])
            while len(self._recent) > self.kept_saved:
                self._recent.popitem(last=False)
            recent = list(self._recent)[-self.kept_loaded:]
        protect = frozenset(rid for rid, _ in self._loaded.items()) | frozenset(recent)
        prune_artifacts(self.root, self.kept_saved, protect=protect)

    def check(self, run_id: str) -> None:
        """UserError in one sentence unless run_id names a run this server has (in memory or saved); loads
        nothing."""
        if self._loaded.peek(run_id) is not None:
            return
        if not RUN_ID.fullmatch(run_id):
            raise UserError("That is not a quantized model id from this page.")
        if not (self.root / run_id).is_dir():
            raise UserError("That quantized model is not here (any more); press Quantize again.")

    def model(self, run_id: str) -> LoadedModel:
        """The loaded model of a run: from memory, else from its saved artifact; UserError when there is none."""
        kept = self._loaded.peek(run_id)
        if kept is not None:
            return kept[0]
        self.check(run_id)
        return self._loaded.get(run_id)[0]

    def finished_summary(self, run_id: str) -> dict | None:
        """The summary of a run finished before (in memory, or saved here and whole), else None: asking for it
        again needs no job."""
        with self._recent_lock:
            recent = self._recent.get(run_id)
        if recent is not None and (self.root / run_id).is_dir():
            return recent
        kept = self._loaded.peek(run_id)
        if kept is not None and current_shape(kept[1]):
            return kept[1]
        return saved_summary(self.root / run_id) if RUN_ID.fullmatch(run_id) else None

    def summaries(self, except_run: str | None = None) -> list[dict]:
        """Summaries of the latest runs (as many as are kept in memory), most recent first."""
        with self._recent_lock:
            recent = list(reversed(self._recent.values()))
        return [summary for summary in recent if summary["run_id"] != except_run][: self.kept_loaded]
