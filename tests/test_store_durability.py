"""The run store across processes: a reader beside a live writer, a writer killed mid-run, a
read-only reader that must leave a run's directory as it found it, and the writer's cost.

(tests/test_store.py has the round trip of every table.)"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from engine.detectors.verdict import Verdict
from engine.live_status import LiveStatus
from engine.store import RunStore
from engine.window_stats import WindowStats

SPAWN = multiprocessing.get_context("spawn")  # as the engine starts its aggregator
BATCH = 7  # windows per commit: a reader must only ever see whole batches
SERIES = [f"proc/stub_{i}/rss_anon" for i in range(10)]


def _window(start: float, model: str = "m") -> WindowStats:
    return WindowStats(start, 1.0, model, "identity", "grpc", 10, 9, 1, 0, 0, 0, 10.0, 1.0, 1.0, 2.0, 2.0, 3.0, 4.0,
                       bytes(range(256)))


def _verdict(i: int) -> Verdict:
    return Verdict("errors", "ERRORS", f"m{i}", float(i), float(i) + 1, 1.0, "%", 1.0, 1.0, {"count": float(i)},
                   (f"text {i}",))


def _write_step(store: RunStore, i: int) -> int:
    """One tick of an aggregator: a batch of windows, resource samples, a row in every table."""
    store.add_windows([_window(float(i * BATCH + k)) for k in range(BATCH)])
    store.add_resources(float(i), {name: float(i * 100 + j) for j, name in enumerate(SERIES)})
    store.add_event(float(i), "worker-0", "scenario_failed", "m", "identity", 1, f"event {i}")
    verdict_id = store.add_verdict(_verdict(i))
    store.add_incident(float(i), f"incident {i}")
    store.set_status(LiveStatus(time_s=float(i), requests=i * 10))
    store.set_totals([("identity", i, 0, i * 10), ("sequence", i, 1, i)])
    return verdict_id


def _busy_writer(path: str, ticks: int, ready: multiprocessing.synchronize.Event) -> None:
    store = RunStore.create(path, "busy", '{"k": "v"}', "2026-11-25T00:00:00+00:00")
    ready.set()
    for i in range(ticks):
        _write_step(store, i)
        store.commit()
        time.sleep(0.002)
    store.close()


def test_a_reader_beside_a_writing_process_sees_whole_commits_only(tmp_path: Path) -> None:
    path, ticks = tmp_path / "run.sqlite", 150
    ready = SPAWN.Event()
    writer = SPAWN.Process(target=_busy_writer, args=(str(path), ticks, ready))
    writer.start()
    try:
        assert ready.wait(30), "the writer did not create its store"
        reader = RunStore.open(path)  # one connection for the whole run, as the live view keeps it
        seen: list[int] = []

        def read() -> int:
            count = len(reader.windows())  # never "database is locked": WAL readers do not wait
            assert count % BATCH == 0, f"a reader saw {count} windows, part of a transaction"
            status = reader.status()
            assert status is None or status.requests == status.time_s * 10
            return count

        try:
            while writer.is_alive():
                seen.append(read())
            writer.join(30)
            seen.append(read())
        finally:
            reader.close()
    finally:
        if writer.is_alive():
            writer.kill()
    assert writer.exitcode == 0
    assert seen == sorted(seen) and seen[-1] == ticks * BATCH
    assert len(set(seen)) > 3, "the reader never overlapped the writer"


def _killed_writer(path: str, committed: int, pending: multiprocessing.synchronize.Event) -> None:
    store = RunStore.create(path, "killed", "{}", "2026-11-25T00:00:00+00:00")
    first = 0
    for i in range(committed):
        verdict_id = _write_step(store, i)
        first = first or verdict_id
        store.commit()
    store.set_verdict_state(first, "cleared")
    store.commit()
    # Then a tick that never commits: a row in every table, and every overwrite.
    _write_step(store, committed)
    store.set_verdict_state(first, "withdrawn")
    store.add_resources(float(committed), {"proc/new_series": 1.0})
    pending.set()
    time.sleep(120)  # killed here


def test_a_killed_writer_keeps_every_commit_and_nothing_after(tmp_path: Path) -> None:
    path, committed = tmp_path / "run.sqlite", 25
    pending = SPAWN.Event()
    writer = SPAWN.Process(target=_killed_writer, args=(str(path), committed, pending))
    writer.start()
    try:
        assert pending.wait(30), "the writer did not reach its uncommitted tick"
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(10)
    finally:
        if writer.is_alive():
            writer.kill()
    assert writer.exitcode == -signal.SIGKILL
    assert Path(f"{path}-wal").exists()  # the run ended without a checkpoint: recovery reads the WAL

    reader = RunStore.open(path)
    try:
        assert reader.run_info().run_id == "killed"
        assert [w.start_s for w in reader.windows()] == [float(i) for i in range(committed * BATCH)]
        assert reader.series_names() == sorted(SERIES)  # not the uncommitted "proc/new_series"
        t, v = reader.series(SERIES[3])
        assert np.array_equal(t, np.arange(committed, dtype=float)) and np.array_equal(v, t * 100 + 3)
        assert [e.text for e in reader.events()] == [f"event {i}" for i in range(committed)]
        rows = reader.verdicts()
        assert [r.verdict for r in rows] == [_verdict(i) for i in range(committed)]
        assert [r.state for r in rows] == ["cleared"] + ["open"] * (committed - 1)
        assert [what for _, what in reader.incidents()] == [f"incident {i}" for i in range(committed)]
        assert reader.status() == LiveStatus(time_s=committed - 1, requests=(committed - 1) * 10)
        assert reader.totals() == [("identity", committed - 1, 0, (committed - 1) * 10),
                                   ("sequence", committed - 1, 1, committed - 1)]
    finally:
        reader.close()

    # A restarted aggregator reopens the same store and carries on where the last commit left it.
    again = RunStore.create(path, "ignored", "{}", "later")
    _write_step(again, committed)
    again.add_resources(float(committed), {"proc/new_series": 5.0})
    again.commit()
    again.close()
    reader = RunStore.open(path)
    try:
        assert reader.run_info().run_id == "killed" and len(reader.windows()) == (committed + 1) * BATCH
        assert reader.series("proc/new_series")[1].tolist() == [5.0]
        assert len(reader.series(SERIES[0])[0]) == committed + 1
    finally:
        reader.close()


def _finished_run(tmp_path: Path) -> Path:
    path = tmp_path / "run.sqlite"
    store = RunStore.create(path, "done", "{}", "2026-11-25T00:00:00+00:00")
    _write_step(store, 0)
    store.commit()
    store.close()
    return path


def test_a_readonly_reader_cannot_write_and_leaves_the_database_file_alone(tmp_path: Path) -> None:
    path = _finished_run(tmp_path)
    digest, mtime = hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns
    reader = RunStore.open(path)
    try:
        assert len(reader.windows()) == BATCH and reader.status().time_s == 0
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.add_incident(1.0, "must not land")
            reader.commit()
    finally:
        reader.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest and path.stat().st_mtime_ns == mtime


def test_a_readonly_reader_creates_no_files(tmp_path: Path) -> None:
    path = _finished_run(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    reader = RunStore.open(path)
    reader.windows()
    reader.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_opening_a_store_that_is_not_there_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        RunStore.open(tmp_path / "run.sqlite")
    assert list(tmp_path.iterdir()) == []


def _creator(path: str) -> None:
    store = RunStore.create(path, "new", "{}", "now")
    time.sleep(0.05)
    store.close()


def test_a_store_is_openable_as_soon_as_its_path_exists(tmp_path: Path) -> None:
    failures = []
    fork = multiprocessing.get_context("fork")  # fast to start; the creator touches no threads
    for attempt in range(10):
        path = tmp_path / f"{attempt}.sqlite"
        creator = fork.Process(target=_creator, args=(str(path),))
        creator.start()
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            pass
        try:
            RunStore.open(path).close()
        except (sqlite3.Error, ValueError) as error:
            failures.append(str(error))
        creator.join(10)
    assert failures == []


def test_the_writer_keeps_up_with_a_long_run(tmp_path: Path) -> None:
    """100 resource series sampled every second for days, a commit every second: measure a
    second of run. The figures printed are what the report quotes."""
    store = RunStore.create(tmp_path / "run.sqlite", "perf", "{}", "now")
    names = [f"proc/stub_{i}/rss_anon" for i in range(100)]
    seconds = 300
    started = time.perf_counter()
    for second in range(seconds):
        store.add_resources(float(second), {name: float(second + j) for j, name in enumerate(names)})
        store.commit()
    resources_s = time.perf_counter() - started
    windows, histogram = 2000, bytes(1024)
    started = time.perf_counter()
    for i in range(0, windows, 10):  # ten keys close a window together
        store.add_windows([WindowStats(float(i), 5.0, f"m{k}", "identity", "grpc", 10, 9, 1, 0, 0, 0, 2.0,
                                       1.0, 1.0, 2.0, 2.0, 3.0, 4.0, histogram) for k in range(10)])
        store.commit()
    windows_s = time.perf_counter() - started
    store.close()
    per_second_ms = resources_s / seconds * 1e3
    print(f"\nresources: {seconds * len(names) / resources_s:,.0f} samples/s with a commit per 100 samples "
          f"({per_second_ms:.2f} ms per second of run); windows: {windows / windows_s:,.0f}/s, 10 per commit")
    # What a run needs is 100 samples a second; this bound only catches a writer gone badly wrong
    # (a commit that fsyncs the WAL, a missing index), not a slow disk.
    assert per_second_ms < 50 and windows / windows_s > 500
    reader = RunStore.open(tmp_path / "run.sqlite")
    try:
        t, v = reader.series(names[42])
        assert len(t) == seconds and v[-1] == seconds - 1 + 42
    finally:
        reader.close()
