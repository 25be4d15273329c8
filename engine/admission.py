"""A bounded waiting room for jobs: a full room answers "busy, try again" at once instead of queueing forever.

A server holds one Admission per kind of work (heavy jobs, transcriptions). Entering takes a place for the
whole time a job waits and runs; a session may hold one place at a time, so one visitor cannot fill the
room by clicking twice. Leaving (normally, by error or by cancel) always frees the place.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from engine.policy import BusyError


class Admission:
    """At most ``capacity`` jobs of one kind running or waiting; one per session."""

    def __init__(self, capacity: int, what: str = "job"):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self.what = what
        self._holders: dict[int, str | None] = {}
        self._tickets = itertools.count()
        self._lock = threading.Lock()
        self.refused = 0  # how many were turned away (busy or already running)

    @property
    def occupied(self) -> int:
        with self._lock:
            return len(self._holders)

    @contextmanager
    def enter(self, session: str | None) -> Iterator[None]:
        """Hold a place while the body runs; raise BusyError (one sentence) when there is none for this session."""
        with self._lock:
            if session is not None and session in self._holders.values():
                self.refused += 1
                raise BusyError(f"You already have a {self.what} running or waiting; wait for it or cancel it first.")
            if len(self._holders) >= self.capacity:
                self.refused += 1
                raise BusyError(f"The server is busy ({len(self._holders)} {self.what}s running or waiting); "
                                f"please try again in a minute.")
            ticket = next(self._tickets)
            self._holders[ticket] = session
        try:
            yield
        finally:
            with self._lock:
                del self._holders[ticket]
