"""The progress callback every long library call takes: progress(fraction done in [0, 1], what is happening).

The web page passes one that moves its progress bar, the worker one that sends a message to the server,
the CLI none (None: no reporting)."""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[float, str], None]
