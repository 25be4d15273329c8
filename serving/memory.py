"""Keeping a long-running server's memory flat on glibc: fewer malloc arenas, freed memory handed back.

glibc gives each thread that allocates its own arena (up to 8 per core) and keeps freed heap in it. A web
server runs handlers on many threads, so models loaded and dropped on different threads leave hundreds of
MB stranded in arenas; the worker keeps the high-water mark of its largest calibration pass. Both calls
are no-ops where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import gc

_M_ARENA_MAX = -8  # mallopt parameter number in glibc's malloc.h


def _glibc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for this process (call before the server starts its threads)."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, arenas))


def release_memory() -> None:
    """Collect garbage and return free heap to the system."""
    gc.collect()
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
