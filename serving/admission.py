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

from serving.policy import BusyError


def refusal(what: str, holders: list, session: str | None, capacity: int, places: int | None = None) -> BusyError | None:
    """Why one more ``what`` cannot come in (holders: the sessions holding jobs now; places: how many places
    those jobs take, default one each), or None when it can."""
    places = len(holders) if places is None else places
    if session is not None and session in holders:
        return BusyError(f"You already have a {what} running or waiting; wait for it or cancel it first.")
    if places >= capacity:
        return BusyError(f"The server is busy ({places} {what}s running or waiting); please try again in a minute.")
    return None


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
            refused = refusal(self.what, list(self._holders.values()), session, self.capacity)
            if refused is not None:
                self.refused += 1
                raise refused
            ticket = next(self._tickets)
            self._holders[ticket] = session
        try:
            yield
        finally:
            with self._lock:
                del self._holders[ticket]
