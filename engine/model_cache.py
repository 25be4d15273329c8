"""A small thread-safe cache of loaded models, least recently used first out."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from engine.models import LoadedModel, load_model


class ModelCache:
    """Keeps at most ``capacity`` models in memory; loading happens once per name."""

    def __init__(self, capacity: int = 2, loader: Callable[[str], LoadedModel] = load_model):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self._capacity = capacity
        self._loader = loader
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> LoadedModel:
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            loaded = self._loader(name)
            self._models[name] = loaded
            while len(self._models) > self._capacity:
                self._models.popitem(last=False)
            return loaded
