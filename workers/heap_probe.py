"""Where a long-lived process's memory goes: a line of figures per minute that separates the
candidates when its RSS creeps up over hours (issue 17: the aggregator's growth).

RssAnon alone cannot say who holds the memory. Side by side, per sample:
- glibc's own account (mallinfo2): bytes in use by malloc's callers vs bytes free inside its
  arenas (fragmentation: freed but not given back) vs mmapped chunks;
- SQLite's own allocator (sqlite3_memory_used and its high-water mark, from the same libsqlite3
  the sqlite3 module loaded): its page cache, statements and lookaside;
- Python's: blocks allocated by the object allocator (sys.getallocatedblocks); its arenas, which it
  maps itself, outside malloc (sys._debugmallocstats: arenas held, bytes in allocated blocks, bytes
  free inside them: a few long-lived objects keep an arena of 1 MiB mapped, and that growth shows
  in RssAnon and nowhere in malloc's figures); and tracemalloc's traced bytes with the top growing
  sites when tracing is on (numpy's buffers are traced too);
- RssAnon, and the process's threads.

Enabled with ENGINE_HEAP_PROBE=1 in the environment of a run (the soak sets it); ENGINE_HEAP_PROBE
=trace also starts tracemalloc (slower: every allocation is recorded). The lines go to
`heap-<process>.jsonl` in the run's directory. Where glibc or libsqlite3 is not there, those fields
are absent, never zero.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import orjson

ENV = "ENGINE_HEAP_PROBE"
INTERVAL_S = 60.0
TOP_SITES = 5


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _load(name: str, symbol: str) -> Any:
    try:
        library = ctypes.CDLL(ctypes.util.find_library(name) or f"lib{name}.so.0")
        return getattr(library, symbol)
    except (OSError, AttributeError):
        return None


_MALLINFO2 = _load("c", "mallinfo2")
if _MALLINFO2 is not None:
    _MALLINFO2.restype = _MallInfo2
_SQLITE_USED = _load("sqlite3", "sqlite3_memory_used")
_SQLITE_HIGH = _load("sqlite3", "sqlite3_memory_highwater")
for _function in (_SQLITE_USED, _SQLITE_HIGH):
    if _function is not None:
        _function.restype = ctypes.c_int64
if _SQLITE_HIGH is not None:
    _SQLITE_HIGH.argtypes = [ctypes.c_int]


def _status_fields() -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem", "VmRSS"):
                out[key.lower()] = float(value.split()[0]) * 1024
            elif key == "Threads":
                out["threads"] = float(value)
    except OSError:
        pass
    return out


_OBMALLOC_FIGURES = {  # sys._debugmallocstats() line -> figure
    "# arenas allocated current": "python_arenas",
    "# bytes in allocated blocks": "python_allocated",
    "# bytes in available blocks": "python_free_blocks",
}


def python_allocator_figures() -> dict[str, float]:
    """Python's object allocator as sys._debugmallocstats() reports it. It writes to the C stderr,
    so fd 2 points at a temporary file meanwhile (a line another thread writes to stderr in that
    instant lands there: once a minute, for a diagnostic run). Empty where it is not CPython's."""
    debug = getattr(sys, "_debugmallocstats", None)
    if debug is None:
        return {}
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                debug()
            finally:
                os.dup2(saved, 2)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
    finally:
        os.close(saved)
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        name = _OBMALLOC_FIGURES.get(key.strip())
        if name is not None:
            out[name] = float(value.strip().replace(",", ""))
    if "python_arenas" in out:
        out["python_arenas"] *= 1 << 20  # bytes: arenas are 1 MiB since Python 3.10
    return out


def heap_figures() -> dict[str, float]:
    """One sample of every figure this host can give (bytes, counts)."""
    out = _status_fields()
    if _MALLINFO2 is not None:
        info = _MALLINFO2()
        out.update(malloc_in_use=float(info.uordblks), malloc_free=float(info.fordblks),
                   malloc_arena=float(info.arena), malloc_mmapped=float(info.hblkhd))
    if _SQLITE_USED is not None:
        out["sqlite_used"] = float(_SQLITE_USED())
    if _SQLITE_HIGH is not None:
        out["sqlite_high"] = float(_SQLITE_HIGH(0))
    out["python_blocks"] = float(sys.getallocatedblocks())
    out.update(python_allocator_figures())
    if tracemalloc.is_tracing():
        out["traced"] = float(tracemalloc.get_traced_memory()[0])
    return out


class HeapProbe:
    """`tick()` from a process's own loop: a line every `interval_s` to `path`."""

    def __init__(self, path: Path, interval_s: float = INTERVAL_S, trace: bool = False) -> None:
        self.path = path
        self.interval_s = interval_s
        self._began = time.monotonic()
        self._next = self._began
        self._baseline: tracemalloc.Snapshot | None = None
        if trace and not tracemalloc.is_tracing():
            tracemalloc.start(8)

    @classmethod
    def from_environment(cls, run_dir: Path, process: str) -> HeapProbe | None:
        """The probe a run asked for (ENGINE_HEAP_PROBE), or None."""
        mode = os.environ.get(ENV, "")
        if not mode or mode == "0":
            return None
        return cls(run_dir / f"heap-{process}.jsonl", trace=mode == "trace")

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now < self._next:
            return
        self._next = now + self.interval_s
        line: dict[str, Any] = {"t_s": round(now - self._began, 1), **heap_figures()}
        if tracemalloc.is_tracing():
            line["growing"] = self._growing_sites()
        with open(self.path, "ab") as out:
            out.write(orjson.dumps(line) + b"\n")

    def _growing_sites(self) -> list[str]:
        """The sites whose traced bytes grew most since the first snapshot after start-up."""
        snapshot = tracemalloc.take_snapshot()
        if self._baseline is None:
            self._baseline = snapshot
            return []
        diff = snapshot.compare_to(self._baseline, "traceback")
        return [f"{stat.size_diff / 1024:+.0f} KiB {stat.count_diff:+d} blocks at "
                # the innermost frames first (a traceback lists the outermost first)
                + " < ".join(f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno}"
                             for frame in reversed(stat.traceback[-4:]))
                for stat in diff[:TOP_SITES]]
