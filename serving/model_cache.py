"""A thread-safe cache of loaded models, least recently used first out.

A load runs outside the cache's lock, so a visitor asking for a model already in memory is never held up
by another model's load; two visitors asking for the same missing model share one load (the second
waits for the first's result instead of loading a second copy).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future

from engine.whisper.models import LoadedModel, load_model


class ModelCache:
    """Keeps at most ``capacity`` models in memory; one load in flight per name."""

    def __init__(self, capacity: int = 2, loader: Callable[[str], LoadedModel] = load_model):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self._capacity = capacity
        self._loader = loader
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, Future] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> LoadedModel:
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            pending = self._loading.get(name)
            loading_here = pending is None
            if loading_here:
                pending = self._loading[name] = Future()
        if not loading_here:
            return pending.result()  # the other caller's load (or its error)
        try:
            loaded = self._loader(name)
        except BaseException as exc:
            with self._lock:
                del self._loading[name]
            pending.set_exception(exc)
            raise
        with self._lock:
            del self._loading[name]
            self._models[name] = loaded
            while len(self._models) > self._capacity:
                self._models.popitem(last=False)
        pending.set_result(loaded)
        return loaded
