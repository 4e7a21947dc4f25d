"""Keep a long-lived process's C heap from growing by itself (glibc malloc), so that its RSS over
a run says what it holds.

Two habits of glibc's malloc make the RSS of a busy Python process creep up for hours with no
object kept: every thread that allocates (ZeroMQ's I/O thread, gRPC's pollers, SQLite's caller)
may get an arena of its own, up to 8 per core, each keeping its freed memory; and freed memory
inside an arena goes back to the system only when it sits at the arena's top. The engine judges
the server's memory by its growth, and is judged by its own (tools/bench/footprint.py), so its
processes limit the arenas at start (`limit_arenas`) and hand freed pages back every minute or so
(`ReleaseTimer`): malloc_trim(0) walks the whole heap, so once a minute, not after every batch.

Elsewhere than glibc both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time

_M_ARENA_MAX = -8  # glibc's mallopt parameters
_M_MMAP_THRESHOLD = -3
ARENAS = 2  # the main arena and one for every other thread: they allocate little
RELEASE_INTERVAL_S = 60.0


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _libc()


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Call first thing in a process, before it starts threads: later threads share `arenas`
    arenas. False where the C library is not glibc."""
    return bool(_LIBC is not None and _LIBC.mallopt(_M_ARENA_MAX, arenas))


def fix_mmap_threshold(threshold: int = 128 * 1024) -> bool:
    """Serve every block of `threshold` bytes or more by its own mmap, for the whole process.

    glibc raises its mmap threshold each time a mapped block is freed (up to 32 MiB), after which
    blocks of that size come from the heap instead. A watch process receives telemetry batches of
    varying sizes all run long; from the heap they leave holes that later small blocks fill, and
    the heap's resident size creeps up by a few MiB an hour with nothing kept (BENCHMARKS.md,
    soak). A fixed threshold keeps large, short-lived blocks out of the heap. Not for the workers:
    their large blocks are per-request payloads, which a mapping per request would slow down.
    False where the C library is not glibc."""
    return bool(_LIBC is not None and _LIBC.mallopt(_M_MMAP_THRESHOLD, threshold))


def release_free_memory() -> bool:
    """Return the heap's free pages to the system (malloc_trim(0)). True when some were."""
    return bool(_LIBC is not None and _LIBC.malloc_trim(0))


class ReleaseTimer:
    """`tick()` from a process's own loop: releases free memory once every `interval_s`."""

    def __init__(self, interval_s: float = RELEASE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._next = time.monotonic() + interval_s

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now >= self._next:
            self._next = now + self.interval_s
            release_free_memory()
