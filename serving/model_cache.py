"""A thread-safe cache of loaded models (or anything costly to load), least recently used first out.

A load runs outside the cache's lock, so a visitor asking for a model already in memory is never held up
by another model's load; two visitors asking for the same missing model share one load (the second
waits for the first's result instead of loading a second copy: a room asking for one quantized run at
once must not hold a copy per visitor).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

from engine.whisper.models import load_model

Value = TypeVar("Value")


class ModelCache(Generic[Value]):
    """Keeps at most ``capacity`` values in memory; one load in flight per name; ``on_evict`` runs (outside
    the lock) after values were dropped."""

    def __init__(self, capacity: int = 2, loader: Callable[[str], Value] = load_model,
                 on_evict: Callable[[], None] | None = None):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self._capacity = capacity
        self._loader = loader
        self._on_evict = on_evict
        self._models: OrderedDict[str, Value] = OrderedDict()
        self._loading: dict[str, Future] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Value:
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
        self.put(name, loaded)
        pending.set_result(loaded)
        return loaded

    def peek(self, name: str) -> Value | None:
        """The value if it is in memory (now the most recently used), else None; never loads."""
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
            return self._models.get(name)

    def put(self, name: str, value: Value) -> None:
        """Keep ``value`` under ``name`` as the most recently used (replacing any value there)."""
        with self._lock:
            self._models[name] = value
            self._models.move_to_end(name)
            evicted = len(self._models) > self._capacity
            while len(self._models) > self._capacity:
                self._models.popitem(last=False)
        if evicted and self._on_evict is not None:
            self._on_evict()

    def items(self) -> list[tuple[str, Value]]:
        """(name, value) pairs, most recently used first."""
        with self._lock:
            return list(reversed(self._models.items()))
