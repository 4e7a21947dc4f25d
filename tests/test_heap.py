"""The engine's processes give freed heap back to the system: after a burst of allocations that
is freed again, releasing brings RssAnon back down (glibc keeps it otherwise). The watch processes
also keep large blocks out of the heap for good; the workers do not."""

from __future__ import annotations

import ctypes
import multiprocessing
import platform

import pytest

pytestmark = pytest.mark.timeout(120)

MIB = 1 << 20


def _rss_anon_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise RuntimeError("no RssAnon in /proc/self/status")


def _burst_then_release(results: multiprocessing.Queue[tuple[int, int, int, bool]]) -> None:
    from workers.heap import limit_arenas, release_free_memory

    limited = limit_arenas()
    before = _rss_anon_kib()
    # 1 KiB blocks come from malloc, not from Python's small-object pools; one in 200 is kept, so
    # the heap's top stays in use and glibc cannot shrink it by itself.
    blocks = [bytearray(1024) for _ in range(200_000)]
    kept = blocks[::200]
    del blocks
    held = _rss_anon_kib()
    release_free_memory()
    after = _rss_anon_kib()
    results.put((before, held, after, limited))
    del kept


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim and mallopt are glibc's")
def test_freed_heap_goes_back_to_the_system() -> None:
    ctx = multiprocessing.get_context("spawn")  # a fresh heap, not the test runner's
    results = ctx.Queue()
    process = ctx.Process(target=_burst_then_release, args=(results,))
    process.start()
    try:
        before, held, after, limited = results.get(timeout=60)
    finally:
        process.join(30)
    assert limited
    assert held - before > 150 * 1024  # ~200 MiB allocated: the freed part stayed resident
    # What is still held (1,000 blocks) is about 1 MiB; the rest went back.
    assert after - before < 0.2 * (held - before), (before, held, after)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mapped_blocks_after_a_large_free(role: str, watch: bool, results: multiprocessing.Queue[int]) -> None:
    """Set up as a process of the run, free one large mapped block, then count how many of four
    512 KiB blocks get a mapping of their own."""
    from workers.process_setup import enter_process

    enter_process("heap-test", role, watch=watch)
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallinfo2.restype = _MallInfo2
    libc.free(libc.malloc(4 * MIB))  # glibc now raises its mmap threshold past 4 MiB, unless it is fixed
    before = libc.mallinfo2().hblks
    blocks = [libc.malloc(MIB // 2) for _ in range(4)]
    results.put(libc.mallinfo2().hblks - before)
    for block in blocks:
        libc.free(block)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt and mallinfo2 are glibc's")
def test_only_the_watch_processes_fix_the_mmap_threshold() -> None:
    """The aggregator and the monitor serve large blocks by mmap for good (their telemetry
    batches); a worker keeps glibc's sliding threshold (its per-request payloads)."""
    ctx = multiprocessing.get_context("spawn")
    mapped = {}
    for role, watch in (("aggregator", True), ("worker 0", False)):
        results = ctx.Queue()
        process = ctx.Process(target=_mapped_blocks_after_a_large_free, args=(role, watch, results))
        process.start()
        try:
            mapped[role] = results.get(timeout=60)
        finally:
            process.join(30)
    assert mapped == {"aggregator": 4, "worker 0": 0}


def test_release_timer_releases_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers import heap

    calls: list[int] = []
    monkeypatch.setattr(heap, "release_free_memory", lambda: calls.append(1) or True)
    timer = heap.ReleaseTimer(interval_s=60.0)
    start = timer._next - 60.0
    for second in range(0, 181, 1):  # three minutes of one-second ticks
        timer.tick(start + second)
    assert len(calls) == 3


def test_the_heap_probe_writes_a_line_per_interval_with_every_figure(tmp_path, monkeypatch) -> None:
    """ENGINE_HEAP_PROBE=1: a line of figures per interval in heap-<process>.jsonl; malloc's and
    SQLite's accounts are there on glibc with libsqlite3 (this host), absent (never 0) elsewhere."""
    import sqlite3

    import orjson

    from workers.heap_probe import ENV, HeapProbe

    monkeypatch.delenv(ENV, raising=False)
    assert HeapProbe.from_environment(tmp_path, "aggregator") is None
    monkeypatch.setenv(ENV, "1")
    probe = HeapProbe.from_environment(tmp_path, "aggregator")
    assert probe is not None
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (x BLOB)")
    probe.tick(now=probe._next)
    db.executemany("INSERT INTO t VALUES (?)", [(bytes(4096),)] * 256)
    probe.tick(now=probe._next - 1)  # before the interval: nothing
    probe.tick(now=probe._next)
    lines = [orjson.loads(line) for line in (tmp_path / "heap-aggregator.jsonl").read_bytes().splitlines()]
    assert len(lines) == 2
    for key in ("rssanon", "threads", "python_blocks", "malloc_in_use", "malloc_free", "sqlite_used"):
        assert key in lines[-1], key
    assert lines[-1]["sqlite_used"] > lines[0]["sqlite_used"]  # the table's pages are SQLite's own


def test_the_probe_sees_pythons_own_arenas_which_malloc_does_not() -> None:
    """Many small objects live in the object allocator's arenas (mapped by Python, outside malloc):
    the probe's python_arenas and python_allocated grow with them (sys._debugmallocstats)."""
    from workers.heap_probe import python_allocator_figures

    before = python_allocator_figures()
    kept = [(float(i), float(i) + 0.5) for i in range(200_000)]  # ~20 MB of small tuples and floats
    after = python_allocator_figures()
    assert after["python_arenas"] - before["python_arenas"] >= 8 << 20
    assert after["python_allocated"] - before["python_allocated"] >= 8 << 20
    assert len(kept) == 200_000
