"""The engine's own memory footprint over a run at full load: RSS of the coordinator, the
aggregator, the monitor and each worker, at the start and the end of the load, and its growth per
hour per process.

It launches the real engine (`python -m engine run`) on the embedded default: the bundled
tritonserver, the generated healthy models, the smoke config's scenario mix and timings, closed
loop, `--workers` x `--concurrency` plans in flight, system shared memory; its results go to a
temporary directory. The engine's processes are found through /proc, below the coordinator's pid:

- the aggregator: the spawned child that holds the run's store (`run.sqlite`) open;
- worker N: the spawned child that holds the run's shared-memory regions `tee_<run>_w<N>_*` open
  (the engine's own name for it, `worker-N`; a replacement worker gets a new N);
- the monitor: the spawned child that is neither, started before the load began (the coordinator
  starts the aggregator, then the monitor, then the workers);
- tritonserver and its python backend stubs are the server's: reported as context, not judged.

Every `--interval` seconds (10) it reads VmRSS, RssAnon, open fds and threads of each, and, for
the run, its files in /dev/shm and the size of its store (run.sqlite and its WAL): the soak
(tools/soak/real.py) judges those, this benchmark reports RSS alone. Growth per hour is a Theil-Sen
slope (with its 95 % interval) over the samples after a warm-up (the first 20 % of the load or the
first 2 minutes, whichever is shorter), beside the RSS at the start and at the end of the load.
The engine ends by itself after `--minutes` of load (SIGINT then SIGKILL if it does not); nothing
of the run may remain (processes, /dev/shm), and what does is said, then removed.

Target (issue 7): growth under 1 MiB/h per engine process over a 20-minute run (the default;
`make bench` runs a shorter one, whose slope is noisier).

    python tools/bench/footprint.py [--minutes 20] [--workers 2] [--concurrency 2] [--profile smoke]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from scipy import stats

from common import ROOT, BenchResult, Target, cpu_seconds, run_alone  # isort: skip
import contextlib

from engine.monitor.procfs import shm_footprint  # noqa: E402  (common put the repo root on sys.path)
from shm import parse_region_name, run_region_prefixes  # noqa: E402
from workers.process_setup import TITLE_PREFIX  # noqa: E402  (what an engine process's title starts with)

GOAL_MIB_PER_H = 1.0
MIB = float(1 << 20)
WARMUP_SHARE, WARMUP_MAX_S = 0.2, 120.0
START_POLL_S = 0.5
SETUP_TIMEOUT_S = 300.0  # launch to load: repository, server start, probes, workers' start
END_TIMEOUT_S = 300.0  # end of the load to the engine's exit (plans finish, final windows, report)
SIGINT_GRACE_S = 120.0
MONITOR_AFTER_S = 30.0  # a spawned child unidentified this long after the load began is taken for a restarted monitor
STUB_NAME = "triton_python_backend_stub"

# The smoke config's models, delays and timeouts (engine/configs/smoke.toml); what differs is below.
CONFIG = """\
# written by tools/bench/footprint.py
[run]
duration = "{duration}s"
results_dir = "{results}"

[models]
zero_delay_ms = 200.0
slow_zero_delay_ms = 2000.0
sequence_idle_timeout = "2s"

[workers]
count = {workers}
concurrency = {concurrency}
load = "closed"
shm = "system"

[scenarios]
sequence_deadline = "10s"
timeout_input_bytes = 1048576
large_tensor_bytes = 1048576
crashing_client_lifetime = "1s"

[detectors]
profile = "{profile}"

[report]
live = "plain"
formats = ["terminal", "json"]
"""


# -- /proc ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    start: int  # start time in clock ticks since boot: with the pid, names one process for good
    comm: str


def proc_table() -> dict[int, ProcInfo]:
    table: dict[int, ProcInfo] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        table[int(entry.name)] = ProcInfo(int(entry.name), int(fields[1]), int(fields[19]), comm)
    return table


def children_of(table: dict[int, ProcInfo], pid: int) -> list[ProcInfo]:
    return sorted((p for p in table.values() if p.ppid == pid), key=lambda p: (p.start, p.pid))


def descendants_of(table: dict[int, ProcInfo], pid: int) -> list[ProcInfo]:
    found, pending = [], [pid]
    while pending:
        for child in children_of(table, pending.pop()):
            found.append(child)
            pending.append(child.pid)
    return found


def status_figures(pid: int) -> tuple[int, int, int] | None:
    """VmRSS and RssAnon in bytes, and the thread count, from one read of /proc/pid/status; None
    when the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    values = {}
    for line in lines:
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            values[key] = int(rest.split()[0]) * 1024
        elif key == "Threads":
            values[key] = int(rest.split()[0])
    if "VmRSS" not in values:  # a zombie
        return None
    return values["VmRSS"], values.get("RssAnon", 0), values.get("Threads", 0)


def fd_count(pid: int) -> int:
    """Open file descriptors (a directory listing: no readlink per fd, cheap enough every sample);
    -1 when the process is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def store_size(store: str) -> int:
    """Bytes of the run's store: the database and its write-ahead log (where new rows land first)."""
    total = 0
    for path in (store, store + "-wal"):
        try:
            total += os.stat(path).st_size
        except OSError:
            continue
    return total


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def open_files(pid: int) -> list[str]:
    links = []
    try:
        entries = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return links
    for fd in entries:
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return links


def alive(pid: int, start: int) -> bool:
    """The same process (not a reused pid) still exists and is not a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = text[text.rindex(")") + 2:].split()
    return fields[0] != "Z" and int(fields[19]) == start


# -- the series -------------------------------------------------------------------------------------
@dataclass
class Series:
    label: str
    engine: bool  # an engine process (judged) or the server's (context)
    pids: list[int]
    first_s: float  # seconds since the load began when first seen
    times: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    anon: list[int] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # CPU seconds so far (all threads; NaN: not read)
    fds: list[int] = field(default_factory=list)  # open file descriptors (-1: not read)
    threads: list[int] = field(default_factory=list)
    gone_s: float | None = None

    def add(self, at: float, rss: int, anon: int, cpu: float = float("nan"), fds: int = -1,
            threads: int = -1) -> None:
        self.times.append(at)
        self.rss.append(rss)
        self.anon.append(anon)
        self.cpu.append(cpu)
        self.fds.append(fds)
        self.threads.append(threads)

    def cpu_share(self, since: float, until: float) -> float | None:
        """Share of one core between the samples nearest to `since` and `until` (seconds of load)."""
        if len(self.times) < 2:
            return None
        t = np.asarray(self.times)
        i, j = int(np.abs(t - since).argmin()), int(np.abs(t - until).argmin())
        if j <= i or not np.isfinite(self.cpu[i]) or not np.isfinite(self.cpu[j]):
            return None
        return (self.cpu[j] - self.cpu[i]) / (t[j] - t[i])


@dataclass
class RunSeries:
    """The run's resources outside its processes, sampled with them: its files in /dev/shm (a region
    nobody unlinks outlives every process) and its store (what the run writes per hour)."""

    times: list[float] = field(default_factory=list)
    shm_files: list[int] = field(default_factory=list)
    shm_bytes: list[int] = field(default_factory=list)  # allocated in tmpfs, not the nominal sizes
    store_bytes: list[int] = field(default_factory=list)

    def add(self, at: float, shm_files: int, shm_bytes: int, store_bytes: int) -> None:
        self.times.append(at)
        self.shm_files.append(shm_files)
        self.shm_bytes.append(shm_bytes)
        self.store_bytes.append(store_bytes)


def theil_sen(times_s: list[float], values: list[int], after_s: float,
              unit: float = MIB) -> tuple[float, float, float, int] | None:
    """Slope in units (MiB) per hour with its 95 % interval, over the samples taken at or after `after_s`."""
    t, y = np.asarray(times_s, dtype=float), np.asarray(values, dtype=float)
    keep = t >= after_s
    if keep.sum() < 3 or np.ptp(t[keep]) <= 0:
        return None
    result = stats.theilslopes(y[keep] / unit, t[keep] / 3600.0)
    return float(result[0]), float(result[2]), float(result[3]), int(keep.sum())


def floor_slope(times_s: list[float], values: list[int], after_s: float, interval_s: float,
                unit: float = MIB) -> float | None:
    """Theil-Sen slope (units, MiB, per hour) of the per-minute minima after `after_s` (bins of a
    sixth of the data on a short run, at least 3 samples each): what stays allocated. A
    transient allocation (a 1 MiB tensor, a freed buffer not yet given back) lifts single samples,
    not the floor; a leak lifts the floor."""
    t, y = np.asarray(times_s, dtype=float), np.asarray(values, dtype=float)
    keep = t >= after_s
    t, y = t[keep], y[keep]
    if len(t) < 3:
        return None
    bin_s = max(3 * interval_s, min(60.0, np.ptp(t) / 6))
    keys = np.floor((t - t[0]) / bin_s)
    bins = [(t[keys == k].mean(), y[keys == k].min()) for k in np.unique(keys) if (keys == k).sum() >= 3]
    if len(bins) < 3:
        return None
    bt, by = np.array(bins).T
    return float(stats.theilslopes(by / unit, bt / 3600.0)[0])


class Tracker:
    """Finds the engine's processes below the coordinator, tells their roles apart, samples them."""

    def __init__(self, coordinator: int, run_id: str, store: Path) -> None:
        self.coordinator = coordinator
        self.run_id, self.store = run_id, str(store)
        self.shm_prefixes = run_region_prefixes(run_id)
        self.run = RunSeries()
        self.roles: dict[tuple[int, int], str] = {}  # (pid, start) -> series label
        self.pending: dict[tuple[int, int], float] = {}  # spawned children not yet identified -> first seen
        self.series: dict[str, Series] = {}
        self.seen: dict[int, int] = {}  # every pid of the run's tree -> start, for the final check
        self.events: list[str] = []
        self.worker_children = 0  # processes the workers started (crashing_client), not sampled
        self.load_began: float | None = None  # monotonic

    def _now(self) -> float:
        return time.monotonic() - self.load_began if self.load_began is not None else 0.0

    def _label(self, role: str, engine: bool, pid: int) -> str:
        label, n = role, 1
        while label in self.series:  # the role's process was replaced: a series of its own
            n += 1
            label = f"{role} (#{n})"
        self.series[label] = Series(label, engine, [pid], self._now())
        if n > 1 or (role.startswith("worker-") and self.load_began is not None):
            self.events.append(f"{label} (pid {pid}) started at {self._now() / 60:.1f} min of load")
        return label

    def _identify(self, pid: int) -> str | None:
        files = open_files(pid)
        if self.store in files:
            return "aggregator"
        for link in files:
            name = link.removeprefix("/dev/shm/").removesuffix(" (deleted)")
            region = parse_region_name(name) if link.startswith("/dev/shm/") else None
            if region is not None and region.run_id == self.run_id:
                return f"worker-{region.worker_id}"
        return None

    def scan(self) -> dict[int, str]:
        """Walk /proc; returns pid -> label of what is sampled now (stub pids under one label)."""
        table = proc_table()
        now = {}
        for child in children_of(table, self.coordinator):
            key = (child.pid, child.start)
            self.seen.setdefault(child.pid, child.start)
            argv = cmdline(child.pid)
            if key not in self.roles:
                if child.comm == "tritonserver" or (argv and argv[0].endswith("tritonserver")):
                    self.roles[key] = self._label("tritonserver", False, child.pid)
                elif any("resource_tracker" in a for a in argv):
                    self.roles[key] = self._label("resource tracker (multiprocessing)", False, child.pid)
                elif any("spawn_main" in a for a in argv) or (argv and argv[0].startswith(TITLE_PREFIX + " ")):
                    # An engine process: titled by its role once it has set itself up, spawn_main before.
                    role = self._identify(child.pid)
                    first = self.pending.setdefault(key, time.monotonic())
                    if role is None and self.load_began is not None and (
                            first < self.load_began or time.monotonic() - first > MONITOR_AFTER_S):
                        role = "monitor"  # started with the aggregator, before the workers; or restarted
                    if role is None:
                        continue
                    self.pending.pop(key, None)
                    self.roles[key] = self._label(role, True, child.pid)
                else:
                    self.roles[key] = self._label(f"other: {child.comm}", False, child.pid)
            label = self.roles[key]
            now[child.pid] = label
            if label.startswith("tritonserver"):
                for below in descendants_of(table, child.pid):
                    self.seen.setdefault(below.pid, below.start)
                    argv0 = (cmdline(below.pid) or [""])[0]
                    if below.comm == STUB_NAME[:15] or argv0.endswith(STUB_NAME):
                        now[below.pid] = "python backend stubs (sum)"
            elif label.startswith("worker-"):
                for below in descendants_of(table, child.pid):
                    if below.pid not in self.seen:
                        self.worker_children += 1
                    self.seen.setdefault(below.pid, below.start)
        self.seen.setdefault(self.coordinator, table[self.coordinator].start if self.coordinator in table else 0)
        if self.coordinator in table:
            if (self.coordinator, table[self.coordinator].start) not in self.roles:
                self.roles[(self.coordinator, table[self.coordinator].start)] = self._label(
                    "coordinator", True, self.coordinator)
            now[self.coordinator] = "coordinator"
        return now

    def workers_up(self) -> int:
        return sum(1 for s in self.series.values() if s.label.startswith("worker-") and s.gone_s is None)

    def sample(self) -> None:
        at = self._now()
        now = self.scan()
        stubs = [pid for pid, label in now.items() if label == "python backend stubs (sum)"]
        for pid, label in now.items():
            if label == "python backend stubs (sum)":
                continue
            figures = status_figures(pid)
            if figures is not None:
                try:
                    cpu = cpu_seconds(pid)
                except (OSError, ValueError, IndexError):
                    cpu = float("nan")
                rss, anon, threads = figures
                self.series[label].add(at, rss, anon, cpu, fd_count(pid), threads)
        if stubs:
            figures = [f for f in (status_figures(pid) for pid in stubs) if f is not None]
            label = "python backend stubs (sum)"
            if label not in self.series:
                self.series[label] = Series(label, False, [], at)
            series = self.series[label]
            series.pids = sorted(set(series.pids) | set(stubs))
            series.add(at, sum(f[0] for f in figures), sum(f[1] for f in figures),
                       fds=sum(max(fd_count(pid), 0) for pid in stubs), threads=sum(f[2] for f in figures))
        self.run.add(at, *shm_footprint(self.shm_prefixes), store_size(self.store))
        for series in self.series.values():
            if series.gone_s is None and series.times and series.times[-1] < at and series.pids:
                series.gone_s = at
                self.events.append(f"{series.label} (pid {series.pids[-1]}) was gone at {at / 60:.1f} min of load")

    def progress(self, detail: bool = False) -> str:
        """One line for the operator; `detail` adds fds/threads and the run's /dev/shm and store."""
        live = [s for s in self.series.values() if s.rss and s.gone_s is None]
        line = f"  [{self._now() / 60:5.1f} min] RSS MiB: " + ", ".join(
            f"{s.label} {s.rss[-1] / MIB:.0f}" for s in live)
        if detail and self.run.times:
            line += ("; fds/threads: " + ", ".join(f"{s.label} {s.fds[-1]}/{s.threads[-1]}" for s in live if s.engine)
                     + f"; /dev/shm {self.run.shm_files[-1]} files {self.run.shm_bytes[-1] / MIB:.1f} MiB"
                     + f"; store {self.run.store_bytes[-1] / MIB:.1f} MiB")
        return line


# -- the run ----------------------------------------------------------------------------------------
def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop(engine: subprocess.Popen, notes: list[str], why: str) -> None:
    if engine.poll() is not None:
        return
    notes.append(f"the engine was stopped with SIGINT ({why})")
    engine.send_signal(signal.SIGINT)
    try:
        engine.wait(SIGINT_GRACE_S)
    except subprocess.TimeoutExpired:
        notes.append(f"the engine did not stop within {SIGINT_GRACE_S:.0f} s of SIGINT: killed")
        engine.kill()
        engine.wait(30)


def _leftovers(tracker: Tracker | None, run_id: str | None, notes: list[str]) -> tuple[int, int]:
    """Nothing of the run may remain: processes of its tree, its files in /dev/shm. Returns how
    many of each were left (and removed here)."""
    left_processes = left_files = 0
    if tracker is not None:
        until = time.monotonic() + 30.0  # children stop with their parent, asynchronously
        remaining = [pid for pid, start in tracker.seen.items() if alive(pid, start)]
        while remaining and time.monotonic() < until:
            time.sleep(0.5)
            remaining = [pid for pid, start in tracker.seen.items() if alive(pid, start)]
        left_processes = len(remaining)
        if remaining:
            names = [f"{pid} ({cmdline(pid)[0] if cmdline(pid) else '?'})" for pid in remaining]
            notes.append("LEFT BEHIND, killed by the benchmark: processes " + ", ".join(names))
            for pid in remaining:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        else:
            notes.append(f"left behind: nothing; all {len(tracker.seen)} processes of the run's tree are gone")
    if run_id:
        files = sorted(p for p in Path("/dev/shm").iterdir() if p.name.startswith(run_region_prefixes(run_id)))
        left_files = len(files)
        if files:
            notes.append(f"LEFT BEHIND in /dev/shm, removed by the benchmark: {', '.join(p.name for p in files)}")
            for path in files:
                path.unlink(missing_ok=True)
        else:
            notes.append("left in /dev/shm: nothing of the run")
    return left_processes, left_files


class EngineExited(RuntimeError):
    """The engine ended before its load began (a set-up failure: exit status 2, its reason logged)."""


def _find_run(results: Path) -> tuple[str, Path] | None:
    runs = [p for p in results.iterdir() if p.is_dir()] if results.is_dir() else []
    return (runs[0].name, runs[0]) if len(runs) == 1 else None


def measure(args: argparse.Namespace, tmp: Path, notes: list[str]) -> tuple[Tracker, float, dict[str, Any]]:
    duration = round(args.minutes * 60.0)
    config = tmp / "footprint.toml"
    config.write_text(CONFIG.format(duration=duration, results=tmp / "results", workers=args.workers,
                                    concurrency=args.concurrency, profile=args.profile))
    log = tmp / "engine.log"
    command = [sys.executable, "-m", "engine", "run", "--config", str(config), "--duration", f"{duration}s"]
    print(f"  engine: {args.workers} workers x {args.concurrency} in flight, {args.profile} detectors, "
          f"{duration / 60:g} min of load; sampling every {args.interval:g} s; log {log}", flush=True)
    tracker: Tracker | None = None
    run_id: str | None = None
    detail = bool(getattr(args, "detail", False))  # the soak's progress lines; the benchmark's stay as they were
    with open(log, "wb") as out:
        engine = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)  # a Ctrl-C here must not reach it as a second SIGINT
    launched = time.monotonic()
    try:
        # Set-up: until the aggregator and every first worker are identified (the workers hold their
        # regions open from before their first request).
        while True:
            if engine.poll() is not None:
                raise EngineExited(f"the engine exited ({engine.returncode}) before its load began:\n{_tail(log)}")
            if time.monotonic() - launched > SETUP_TIMEOUT_S:
                raise RuntimeError(f"the load did not begin within {SETUP_TIMEOUT_S:.0f} s:\n{_tail(log)}")
            if tracker is None and (found := _find_run(tmp / "results")) is not None:
                run_id = found[0]
                tracker = Tracker(engine.pid, run_id, Path(os.path.realpath(found[1] / "run.sqlite")))
            if tracker is not None:
                tracker.scan()
                roles = {s.label for s in tracker.series.values()}
                if tracker.workers_up() >= args.workers and "aggregator" in roles:
                    break
            time.sleep(START_POLL_S)
        tracker.load_began = time.monotonic()
        tracker.scan()  # the monitor: the spawned child left, started before the load
        setup_s = tracker.load_began - launched
        print(f"  load began {setup_s:.0f} s after launch (run {run_id}): " + ", ".join(
            f"{s.label} pid {s.pids[0]}" for s in tracker.series.values() if s.pids and "stubs" not in s.label),
            flush=True)
        last = duration - 2.0  # the engine counts its duration from the workers' first heartbeats, a moment later
        every_minute = max(1, round(60.0 / args.interval))
        k = 0
        while k * args.interval <= last and engine.poll() is None:
            delay = tracker.load_began + k * args.interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            tracker.sample()
            if k % every_minute == 0:
                print(tracker.progress(detail), flush=True)
            k += 1
        if engine.poll() is not None:
            notes.append(f"the engine ended before the load's end ({engine.returncode}), "
                         f"{tracker._now() / 60:.1f} min into it")
        print(tracker.progress(detail) + " (end of the load)", flush=True)
        try:
            engine.wait(max(10.0, duration - tracker._now()) + END_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _stop(engine, notes, f"still running {END_TIMEOUT_S:.0f} s after the end of its load")
    except BaseException:
        _stop(engine, notes, "the benchmark failed or was interrupted")
        _leftovers(tracker, run_id, notes)
        for note in notes:
            print(f"  {note}", flush=True)
        raise
    left_processes, left_files = _leftovers(tracker, run_id, notes)
    outcome: dict[str, Any] = {"exit": engine.returncode, "setup_s": setup_s, "run_id": run_id,
                               "log": _tail(log, 3), "left_processes": left_processes, "left_shm_files": left_files,
                               "store_bytes_after": store_size(tracker.store)}  # before a temporary directory goes
    report = tmp / "results" / str(run_id) / "report.json"
    if report.exists():
        outcome["report"] = orjson.loads(report.read_bytes())
    heap = tmp / "results" / str(run_id) / "heap-aggregator.jsonl"  # with ENGINE_HEAP_PROBE set (the soak)
    if heap.exists():
        outcome["heap"] = [orjson.loads(line) for line in heap.read_bytes().splitlines() if line.strip()]
    return tracker, float(duration), outcome


def run(args: argparse.Namespace) -> BenchResult:
    started = time.monotonic()
    notes: list[str] = []
    tracker, duration, outcome = collect(args, notes)
    return _result(args, tracker, duration, outcome, notes, time.monotonic() - started)


def collect(args: argparse.Namespace, notes: list[str]) -> tuple[Tracker, float, dict[str, Any]]:
    """The measurement without its judgement (the soak judges more of it): the tracker with every
    sample, the load's length in seconds, and the engine's outcome (exit status, report.json)."""
    for attempt in (1, 2):  # a server that fails to start (it happens to the bundled one) gets one more try
        try:
            return _attempt(args, notes)
        except EngineExited as exc:
            if attempt == 2:
                raise
            first = str(exc).splitlines()
            notes.append(f"first attempt: {first[0]} ({first[-1].strip()[:160]}); started again")
            print(f"  {notes[-1]}", flush=True)
    raise AssertionError("unreachable")


def _attempt(args: argparse.Namespace, notes: list[str]) -> tuple[Tracker, float, dict[str, Any]]:
    if not args.keep:
        with tempfile.TemporaryDirectory(prefix="bench-footprint-") as name:
            return measure(args, Path(name), notes)
    tmp = Path(tempfile.mkdtemp(prefix="bench-footprint-"))
    notes.append(f"the engine's log, config, run directory and samples (samples.json) are kept in {tmp}")
    tracker, duration, outcome = measure(args, tmp, notes)
    samples: dict[str, Any] = {s.label: {"pids": s.pids, "t_s": s.times, "rss": s.rss, "rss_anon": s.anon,
                                         "cpu_s": s.cpu, "fds": s.fds, "threads": s.threads}
                               for s in tracker.series.values()}
    samples["run (/dev/shm, store)"] = {"t_s": tracker.run.times, "shm_files": tracker.run.shm_files,
                                        "shm_bytes": tracker.run.shm_bytes, "store_bytes": tracker.run.store_bytes}
    (tmp / "samples.json").write_bytes(orjson.dumps(samples, option=orjson.OPT_SERIALIZE_NUMPY))
    return tracker, duration, outcome


def _result(args: argparse.Namespace, tracker: Tracker, duration: float, outcome: dict[str, Any],
            notes: list[str], seconds: float) -> BenchResult:
    warmup = min(WARMUP_SHARE * duration, WARMUP_MAX_S)
    rows, targets = [], []
    rank = {"coordinator": 0, "aggregator": 1, "monitor": 2}
    order = sorted(tracker.series.values(),
                   key=lambda s: (not s.engine, rank.get(s.label.split(" (#")[0], 3), s.first_s, s.label))
    for series in order:
        if not series.rss:
            continue
        fit = theil_sen(series.times, series.rss, warmup)
        fit_anon = theil_sen(series.times, series.anon, warmup)
        floor = floor_slope(series.times, series.rss, warmup, args.interval)
        half = theil_sen(series.times, series.rss, (max(warmup, series.times[0]) + series.times[-1]) / 2)
        after = next((r for t, r in zip(series.times, series.rss) if t >= warmup), series.rss[-1])
        pids = (f"{len(series.pids)} processes" if len(series.pids) > 3
                else ", ".join(str(p) for p in series.pids))
        label = series.label if series.engine else f"{series.label} [server, context]"
        if "resource tracker" in series.label:
            label = f"{series.label} [Python's, context]"
        rows.append([label, pids, series.rss[0] / MIB, after / MIB, series.rss[-1] / MIB,
                     f"{fit[0]:+.2f}" if fit else "-", f"{fit[1]:+.2f} .. {fit[2]:+.2f}" if fit else "-",
                     f"{half[0]:+.2f}" if half else "-", f"{floor:+.2f}" if floor is not None else "-",
                     f"{fit_anon[0]:+.2f}" if fit_anon else "-", f"{len(series.rss)} ({fit[3] if fit else 0} in fit)"])
        if not series.engine:
            continue
        span = (series.times[-1] - max(warmup, series.times[0])) if series.times else 0.0
        if fit is None or span < (duration - warmup) / 2:
            targets.append(Target(f"RSS growth, {series.label}", f"< {GOAL_MIB_PER_H:g} MiB/h",
                                  f"not judged: {fit[3] if fit else 0} samples after warm-up over "
                                  f"{span / 60:.1f} min (the process did not live through the load)", False))
            continue
        slope, low, high, n = fit
        settled = [r / MIB for t, r in zip(series.times, series.rss) if t >= warmup]
        targets.append(Target(f"RSS growth, {series.label}", f"< {GOAL_MIB_PER_H:g} MiB/h",
                              f"{slope:+.2f} MiB/h (95 % interval {low:+.2f} to {high:+.2f}; {n} samples over "
                              f"{span / 60:.1f} min; RSS {series.rss[0] / MIB:.1f} -> {series.rss[-1] / MIB:.1f} MiB, "
                              f"{min(settled):.1f} to {max(settled):.1f} after warm-up"
                              + (f"; second half {half[0]:+.2f} MiB/h" if half else "") + ")",
                              slope < GOAL_MIB_PER_H))
    report = outcome.get("report") or {}
    figures = report.get("figures") or {}
    load = (f"{figures['requests']:,} requests "
            f"({figures['requests'] / max(report.get('duration_s') or duration, 1):,.0f}/s)"
            if "requests" in figures else "request count unknown (no report.json)")
    measured, notes = notes, [
        f"the real engine on the embedded default: bundled tritonserver (CPU), the smoke config's healthy models "
        f"and scenario mix, {args.workers} workers x {args.concurrency} plans in flight (closed loop), system "
        f"shared memory, the {args.profile} detector profile; {duration / 60:g} min of load ({load}), "
        f"set-up {outcome['setup_s']:.0f} s; engine exit status {outcome['exit']}"
        + (f", verdict {report.get('verdict')}" if report else ""),
        f"RSS = VmRSS from /proc, sampled every {args.interval:g} s from the moment every first worker held "
        f"its shared-memory regions; slope = Theil-Sen over the samples after a {warmup:.0f} s warm-up (95 % "
        "interval beside it; the samples are autocorrelated, so read it as indicative); floor slope = the same "
        "over the per-minute minima (what stays allocated; transient peaks do not lift it); 2nd-half slope = "
        "the slope over the second half of those samples alone (a process that settles slows down, a leak "
        "keeps its pace); RssAnon's slope beside them; 'after warm-up' = the first sample after it",
        f"the issue's figure is a 20-minute run (the default, `--minutes 20`); this run: {duration / 60:g} min"
        + (" (a short run's slope is noisier)" if duration < 20 * 60 else ""),
        "tritonserver and its python backend stubs are the server's, shown as context and not judged; the "
        f"processes the workers start (crashing_client scenario, {tracker.worker_children} seen) are short-lived "
        "and not sampled",
    ]
    notes += cpu_note(order, min(120.0, duration / 5))
    notes += tracker.events or ["no engine process was replaced during the load"]
    for at, what in report.get("incidents") or []:
        notes.append(f"engine incident at {at:.0f} s: {what}")
    failing = [v.get("text", "") for v in report.get("verdicts") or [] if v.get("failing")]
    if failing:
        notes.append(f"the engine's failing verdicts ({len(failing)}): " + "; ".join(t[:160] for t in failing[:3]))
    notes += measured
    return BenchResult("footprint", "4. Engine memory footprint: RSS per process over a run at full load",
                       ["process", "pid", "start RSS MiB", "after warm-up MiB", "end RSS MiB", "slope MiB/h",
                        "95 % interval MiB/h", "2nd-half slope MiB/h", "floor slope MiB/h", "RssAnon slope MiB/h",
                        "samples"],
                       rows, targets, notes, seconds)


def cpu_note(series_list: list[Series], part: float) -> list[str]:
    """A note of each engine process's CPU (% of one core) over the first and the last `part`
    seconds of load; none when no process has both."""
    shares = []
    for series in series_list:
        if series.engine and series.times:
            first = series.cpu_share(series.times[0], series.times[0] + part)
            last = series.cpu_share(series.times[-1] - part, series.times[-1])
            if first is not None and last is not None:
                shares.append(f"{series.label} {100 * first:.0f} -> {100 * last:.0f}")
    if not shares:
        return []
    return [f"CPU, % of one core over the first and the last {part / 60:g} min of load: " + ", ".join(shares)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=20.0,
                        help="minutes of load (default 20, the issue's figure; make bench runs 6)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=2, help="plans in flight per worker (default 2)")
    parser.add_argument("--profile", choices=("smoke", "long"), default="smoke",
                        help="detector profile (default smoke: 10 s windows, 1 s resource samples, the busier one)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between two samples (default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (store, log, reports)")


def main() -> None:
    run_alone(__doc__, add_arguments, run)


if __name__ == "__main__":
    main()
