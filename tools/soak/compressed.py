"""6.5 days of a run through the real watch side, in minutes: the engine's long-run properties
proven under time compression (issue 17).

The real aggregator (engine.aggregator.service.Aggregator), with its real store, detectors and
window folder, runs on a virtual clock and is fed what a 6.5-day run of the embedded default
sends it: request batches of four models from two workers, worker heartbeats, the monitor's
resource samples (the series the real sampler writes: the server and each python stub, per-model
metrics, /dev/shm, host memory), restarts of a worker and of a stub, a leak that starts on day 4,
a latency drift that starts on day 5, and healthy controls beside them. Messages go through the
real wire format (msgpack, `Aggregator.handle`); the clock moves as fast as the aggregator takes
them. Then `engine report RUN_DIR` builds the report from the store, as a user would.

Scale, and why it covers the same ground: a real 6.5-day run at 5,000 req/s is 2.8 billion records,
too many to generate. The detectors never read records: they read windows (latency quantiles per
model, scenario and protocol per 60 s window), resource samples and heartbeats. So every one of
those is produced at the real cadence (every window of every series, a resource sample every 5 s
with about 80 series in it) and each window holds `--records` records (240 by default, over the
drift detector's 100-request minimum), 7.5 million in all. The aggregator ticks every 10 virtual
seconds instead of every second, and workers send a heartbeat per tick: every detector's cadence
(growth every 60 s, leak every 600 s, drift per window) is a multiple of that, so nothing they
decide changes; only the live status is written less often.

It reports:
- the RSS (VmRSS and RssAnon) of this process, which runs the aggregator and writes the store,
  per virtual hour, and its slope per virtual day after the first virtual hour (flat: < 1 MiB/day;
  a scaled run of less than two days is judged on its second half);
- the store's size at the end;
- how long `engine report` takes on that store, and the size of report.html;
- the verdicts against the planted truth: the day-4 leak and the day-5 drift found (and when),
  nothing on the controls, nothing from the restarts.

    python tools/soak/compressed.py [--days 6.5] [--records 240] [--json out.json] [--keep DIR]

Exit status 0 when every check holds, 1 otherwise. The test suite runs a scaled version
(tests/test_soak_compressed.py) so every landing proves these properties again.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import zmq
from scipy import stats

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from a checkout: the engine's packages are here
    sys.path.insert(0, str(ROOT))

from engine.aggregator.service import LOAD_STOPPED, WORKER_GONE, Aggregator, AggregatorSpec  # noqa: E402
from engine.config._sections import DetectorsSection  # noqa: E402
from engine.detectors.settings import resolve_settings  # noqa: E402
from engine.series_names import (  # noqa: E402
    MEM_AVAILABLE,
    MEM_TOTAL,
    SAMPLE_MS,
    SERVER,
    SHM_BYTES,
    SHM_FILES,
    model_series,
    process_series,
    stub_process,
)
from workers.telemetry import (  # noqa: E402
    COLUMNS,
    KIND_BATCH,
    KIND_EVENT,
    KIND_HEARTBEAT,
    KIND_RESOURCES,
    STATUS_OK,
    pack,
    unpack,
)

MIB = float(1 << 20)
HOUR = 3600.0
DAY = 24 * HOUR
ORIGIN_NS = 10**12  # the virtual run starts here (not at 0: a time_ns of 0 reads as "absent")
TICK_S = 10.0
SAMPLE_S = 5.0  # the long profile's resource sampling period
GOAL_MIB_PER_DAY = 1.0
SCALED_DAYS = 2.0  # a run shorter than this is a scaled one (the tests')
STUB_FIELDS = ("rss_anon", "rss_file", "rss_shmem", "pss", "fds", "threads", "cpu_s", "deleted_shm_maps")
METRICS = ("success", "failure", "inferences", "executions", "pending", "queue_us", "compute_input_us",
           "compute_infer_us", "compute_output_us", "stats_success", "stats_fail", "stats_queue_ns",
           "stats_compute_infer_ns", "stats_executions")


@dataclass(frozen=True)
class Truth:
    """What is planted, in virtual run seconds (scaled with --days)."""

    days: float
    leak_model: str = "leak_fp32"
    leak_mib_h: float = 16.0  # DETECTION.md's LEAK example: about 47 bytes/request at 100 req/s
    drift_model: str = "drift_fp32"
    drift_gain: float = 0.30  # p50 +30 %, reached over an hour
    control_models: tuple[str, ...] = ("identity_fp32", "sequence_int32")
    restarted_stub: str = "identity_fp32_0_0"

    @property
    def run_s(self) -> float:
        return self.days * DAY

    @property
    def leak_onset_s(self) -> float:
        return self.run_s * 4.0 / 6.5

    @property
    def drift_onset_s(self) -> float:
        return self.run_s * 5.0 / 6.5

    @property
    def worker_restart_s(self) -> float:
        return self.run_s * 2.0 / 6.5

    @property
    def stub_restart_s(self) -> float:
        return self.run_s * (50.0 / 24.0) / 6.5

    @property
    def models(self) -> tuple[str, ...]:
        return (*self.control_models, self.leak_model, self.drift_model)


class VirtualClock:
    """Monotonic nanoseconds that move only when told to."""

    def __init__(self) -> None:
        self.ns = ORIGIN_NS

    def __call__(self) -> int:
        return self.ns

    @property
    def run_s(self) -> float:
        return (self.ns - ORIGIN_NS) / 1e9


def _ar1(rng: np.random.Generator, previous: float, sigma: float, phi: float = 0.8) -> float:
    """One step of AR(1) noise: what real memory series look like."""
    return phi * previous + rng.normal(0.0, sigma * np.sqrt(1 - phi ** 2))


@dataclass
class _Stub:
    instance: str
    model: str
    pid: int
    started_s: float
    noise: float = 0.0
    cpu_s: float = 0.0


@dataclass
class _Worker:
    name: str
    seq: int = 0
    plans: dict[str, list[int]] = field(default_factory=dict)
    records: int = 0


class Feed:
    """Generates the run's messages tick by tick; its own state stays bounded."""

    def __init__(self, truth: Truth, records_per_window: int, window_s: float, seed: int = 7) -> None:
        self.truth = truth
        self.rng = np.random.default_rng(seed)
        self.models = truth.models
        self.scenarios = ("identity", "sequence_valid")
        self.workers = [_Worker("worker-0"), _Worker("worker-1")]
        self.per_worker_s = records_per_window / window_s / len(self.workers)  # records per second per model
        self.stubs = {f"{m}_0_0": _Stub(f"{m}_0_0", m, 2000 + i, 0.0) for i, m in enumerate(self.models)}
        self.server_noise = 0.0
        self.monitor_seq = 0
        self.coordinator_seq = 0
        self.completed = {m: 0 for m in self.models}
        self.next_sequence = 1

    # -- request records ----------------------------------------------------------------------
    def _latency_ms(self, model: str, at_s: np.ndarray) -> np.ndarray:
        base = {"sequence_int32": 1.6, self.truth.drift_model: 2.2}.get(model, 1.2)
        values = base * np.exp(self.rng.normal(0.0, 0.25, len(at_s)))
        if model == self.truth.drift_model:
            ramp = np.clip((at_s - self.truth.drift_onset_s) / HOUR, 0.0, 1.0)
            values *= 1.0 + self.truth.drift_gain * ramp
        return values

    def batches(self, start_s: float, end_s: float) -> list[bytes]:
        out = []
        for worker in self.workers:
            columns: dict[str, list[np.ndarray]] = {name: [] for name in COLUMNS}
            for code, model in enumerate(self.models):
                count = self.rng.poisson(self.per_worker_s * (end_s - start_s))
                at = np.sort(self.rng.uniform(start_s, end_s, count))
                latency_ns = (self._latency_ms(model, at) * 1e6).astype(np.int64)
                sequence = model.startswith("sequence")
                columns["start_ns"].append((ORIGIN_NS + at * 1e9).astype(np.int64))
                columns["latency_ns"].append(latency_ns)
                columns["model"].append(np.full(count, code, np.uint16))
                columns["scenario"].append(np.full(count, 1 if sequence else 0, np.uint16))
                columns["status"].append(np.full(count, STATUS_OK, np.uint8))
                columns["sequence_id"].append(
                    (self.next_sequence + np.arange(count) // 4).astype(np.uint64) if sequence
                    else np.zeros(count, np.uint64))
                columns["step"].append((np.arange(count) % 4).astype(np.int32) if sequence
                                       else np.full(count, -1, np.int32))
                if sequence:
                    self.next_sequence += count // 4 + 1
                self.completed[model] += count
                scenario = self.scenarios[1 if sequence else 0]
                plan = worker.plans.setdefault(scenario, [0, 0, 0])
                plan[0] += count // 4 if sequence else count
                plan[2] += count
            n = sum(len(part) for part in columns["start_ns"])
            order = np.argsort(np.concatenate(columns["start_ns"]), kind="stable")
            body = {"protocol": "grpc", "models": list(self.models), "scenarios": list(self.scenarios), "count": n,
                    "columns": {name: np.concatenate(parts).astype(COLUMNS[name])[order].tobytes()
                                for name, parts in columns.items()}}
            worker.records += n
            out.append(pack(KIND_BATCH, worker.name, self._next(worker), body))
        return out

    def heartbeats(self, now_ns: int) -> list[bytes]:
        out = []
        for worker in self.workers:
            oldest = now_ns - 2_000_000
            body = {"time_ns": now_ns, "in_flight": len(self.models), "oldest_in_flight_ns": oldest,
                    "open_sequences": {}, "records_sent": worker.records, "records_dropped": 0,
                    "plans": {k: tuple(v) for k, v in worker.plans.items()},
                    "oldest_by_model": {str(code): oldest for code in range(len(self.models))},
                    "in_flight_by_model": {str(code): 1 for code in range(len(self.models))},
                    "starts_by_model": {}, "models": list(self.models)}
            out.append(pack(KIND_HEARTBEAT, worker.name, self._next(worker), body))
        return out

    @staticmethod
    def _next(worker: _Worker) -> int:
        worker.seq += 1
        return worker.seq - 1

    # -- the monitor ----------------------------------------------------------------------------
    def sample(self, at_s: float, now_ns: int) -> bytes:
        truth, rng = self.truth, self.rng
        samples: dict[str, float] = {}
        self.server_noise = _ar1(rng, self.server_noise, 3e6)
        server = {"pid": 1000.0, "rss_anon": 420 * MIB + 40 * MIB * (1 - np.exp(-at_s / 300)) + self.server_noise,
                  "rss_file": 180 * MIB, "rss_shmem": 64 * MIB, "pss": 600 * MIB,
                  "fds": float(120 + rng.integers(0, 6)), "threads": float(90 + rng.integers(0, 3)),
                  "cpu_s": at_s * 0.9, "deleted_shm_maps": 0.0}
        samples.update({process_series(SERVER, k): v for k, v in server.items()})
        for stub in self.stubs.values():
            since = at_s - stub.started_s
            stub.noise = _ar1(rng, stub.noise, 1e6)
            stub.cpu_s += SAMPLE_S * 0.15
            rss = 60 * MIB + 40 * MIB * min(1.0, since / 480.0) + stub.noise  # start-up: arenas fill
            if stub.model == truth.leak_model and at_s > truth.leak_onset_s:
                rss += truth.leak_mib_h * MIB * (at_s - truth.leak_onset_s) / HOUR
            figures = {"pid": float(stub.pid), "rss_anon": rss, "rss_file": 40 * MIB, "rss_shmem": 8 * MIB,
                       "pss": rss + 20 * MIB, "fds": float(14 + rng.integers(0, 3)),
                       "threads": 6.0 + min(8.0, np.floor(since / 60.0)),  # its pool spins up, then stays
                       "cpu_s": stub.cpu_s, "deleted_shm_maps": 0.0}
            samples.update({process_series(stub_process(stub.instance), k): v for k, v in figures.items()})
        for model in self.models:
            done = float(self.completed[model])
            for metric in METRICS:
                samples[model_series(model, metric)] = 0.0 if metric in ("pending", "failure", "stats_fail") else done
        samples[SHM_FILES], samples[SHM_BYTES] = 24.0, 24 * 2 * MIB
        samples[MEM_AVAILABLE] = 18e9 + rng.normal(0, 5e7)
        samples[MEM_TOTAL] = 24e9
        samples[SAMPLE_MS] = 3.0
        self.monitor_seq += 1
        return pack(KIND_RESOURCES, "monitor", self.monitor_seq - 1, {"time_ns": now_ns, "samples": samples})

    # -- restarts ---------------------------------------------------------------------------------
    def restart_stub(self, at_s: float, now_ns: int) -> list[bytes]:
        stub = self.stubs[self.truth.restarted_stub]
        old = stub.pid
        stub.pid, stub.started_s, stub.noise = old + 100, at_s, 0.0
        return [self._monitor_event(now_ns, "process_gone", stub.model, f"stub {stub.instance} pid {old} is gone"),
                self._monitor_event(now_ns, "process_started", stub.model,
                                    f"stub {stub.instance} pid {stub.pid}")]

    def restart_worker(self, now_ns: int) -> list[bytes]:
        gone = self.workers.pop(1)
        self.workers.append(_Worker("worker-2"))
        self.coordinator_seq += 1
        return [pack(KIND_EVENT, "coordinator", self.coordinator_seq - 1,
                     {"what": WORKER_GONE, "model": "", "scenario": "", "text": gone.name, "count": 1,
                      "time_ns": now_ns})]

    def load_stopped(self, now_ns: int) -> bytes:
        self.coordinator_seq += 1
        return pack(KIND_EVENT, "coordinator", self.coordinator_seq - 1,
                    {"what": LOAD_STOPPED, "model": "", "scenario": "", "text": "", "count": 1, "time_ns": now_ns})

    def _monitor_event(self, now_ns: int, what: str, model: str, text: str) -> bytes:
        self.monitor_seq += 1
        return pack(KIND_EVENT, "monitor", self.monitor_seq - 1,
                    {"what": what, "model": model, "scenario": "", "text": text, "count": 1, "time_ns": now_ns})


def process_memory() -> tuple[float, float]:
    """(VmRSS, RssAnon) of this process, bytes."""
    figures = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "RssAnon:")):
            key, value = line.split(":", 1)
            figures[key] = float(value.split()[0]) * 1024
    return figures["VmRSS"], figures["RssAnon"]


@dataclass
class Outcome:
    days: float
    records: int = 0
    messages: int = 0
    feed_s: float = 0.0
    memory: list[tuple[float, float, float]] = field(default_factory=list)  # (virtual hour, VmRSS, RssAnon)
    store_bytes: int = 0
    report_s: float = 0.0
    report_exit: int = -1
    html_bytes: int = 0
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    incidents: list[str] = field(default_factory=list)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)  # (what, held, measured)

    @property
    def passed(self) -> bool:
        return all(held for _, held, _ in self.checks)


def feed_run(truth: Truth, run_dir: Path, records_per_window: int, progress: bool) -> Outcome:
    settings = resolve_settings(DetectorsSection(profile="long"))
    clock = VirtualClock()
    context = zmq.Context()
    spec = AggregatorSpec(
        run_id=run_dir.name, endpoint=f"inproc://soak-{os.getpid()}", store_path=str(run_dir / "run.sqlite"),
        config_json=orjson.dumps({"config": {"run": {"duration": truth.run_s}}, "detectors": settings.echo(),
                                  "targets": []}).decode(),
        started_wall="2026-12-05T00:00:00+00:00", origin_ns=ORIGIN_NS, run_s=truth.run_s, settings=settings)
    aggregator = Aggregator(spec, context, clock=clock)
    feed = Feed(truth, records_per_window, settings.window_s)
    outcome = Outcome(truth.days)
    began = time.monotonic()
    restarts = {"stub": truth.stub_restart_s, "worker": truth.worker_restart_s}
    next_hour = 0.0
    try:
        ticks = int(truth.run_s / TICK_S)
        for tick in range(1, ticks + 1):
            start_s = (tick - 1) * TICK_S
            messages: list[bytes] = []
            for k in range(int(TICK_S / SAMPLE_S)):
                at = start_s + (k + 1) * SAMPLE_S
                messages.append(feed.sample(at, ORIGIN_NS + int(at * 1e9)))
            end_ns = ORIGIN_NS + int(tick * TICK_S * 1e9)
            messages += feed.batches(start_s, tick * TICK_S)
            for what, when in list(restarts.items()):
                if when <= tick * TICK_S:
                    del restarts[what]
                    messages += feed.restart_stub(when, end_ns) if what == "stub" else feed.restart_worker(end_ns)
            clock.ns = end_ns
            messages += feed.heartbeats(end_ns)
            for data in messages:
                aggregator.handle(unpack(data))
            outcome.messages += len(messages)
            aggregator.tick()
            if clock.run_s >= next_hour * HOUR:
                outcome.memory.append((next_hour, *process_memory()))
                if progress and next_hour % 12 == 0:
                    rss = outcome.memory[-1][1] / MIB
                    print(f"  virtual {next_hour / 24:4.1f} d ({time.monotonic() - began:5.0f} s): RSS {rss:.1f} MiB, "
                          f"{aggregator.requests:,} records, {len(aggregator.verdicts)} verdicts", flush=True)
                next_hour += 1
        aggregator.handle(unpack(feed.load_stopped(clock.ns)))
        aggregator.tick(final=True)
        outcome.records = aggregator.requests
    finally:
        aggregator.close()
        context.term()
    outcome.feed_s = time.monotonic() - began
    outcome.memory.append((clock.run_s / HOUR, *process_memory()))
    return outcome


def build_report(run_dir: Path, outcome: Outcome) -> None:
    """`engine report RUN_DIR`, as a user runs it on a finished run."""
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "engine", "report", str(run_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    outcome.report_s = time.monotonic() - began
    outcome.report_exit = done.returncode
    html = run_dir / "report.html"
    outcome.html_bytes = html.stat().st_size if html.exists() else 0
    if done.returncode not in (0, 1):  # 1: the run failed (planted faults): the report still exists
        outcome.checks.append(("engine report", False, done.stderr.strip()[-500:]))


def judge(truth: Truth, run_dir: Path, outcome: Outcome) -> None:
    from engine.store import RunStore

    store = RunStore.open(run_dir / "run.sqlite")
    try:
        rows = store.verdicts()
        outcome.incidents = [text for _, text in store.incidents()]
    finally:
        store.close()
    outcome.verdicts = [{"kind": r.verdict.kind, "detector": r.verdict.detector, "subject": r.verdict.subject,
                         "since_h": r.verdict.since_s / HOUR, "at_h": r.verdict.at_s / HOUR, "state": r.state,
                         "text": r.verdict.describe()} for r in rows]
    raised = [r.verdict for r in rows if r.state != "withdrawn" and r.verdict.kind != "PLATEAU"]
    leak = [v for v in raised if v.detector == "leak" and truth.leak_model in v.subject
            and v.kind in ("LEAK", "GROWTH") and v.unit == "MiB/h"]
    drift = [v for v in raised if v.detector == "drift" and truth.drift_model in v.subject]
    others = [v for v in raised if v not in leak and v not in drift]
    found_leak = min(leak, key=lambda v: v.at_s) if leak else None
    found_drift = min(drift, key=lambda v: v.at_s) if drift else None
    outcome.checks.append((
        f"the day-{truth.leak_onset_s / DAY:g} leak ({truth.leak_mib_h:g} MiB/h in {truth.leak_model}'s stub) found",
        found_leak is not None and found_leak.at_s >= truth.leak_onset_s,
        f"{found_leak.kind} {found_leak.size:.1f} {found_leak.unit} at day {found_leak.at_s / DAY:.2f}, "
        f"{(found_leak.at_s - truth.leak_onset_s) / HOUR:.1f} h after its onset" if found_leak else "not found"))
    outcome.checks.append((
        f"the day-{truth.drift_onset_s / DAY:g} drift (+{truth.drift_gain:.0%} p50 of {truth.drift_model}) found",
        found_drift is not None and found_drift.at_s >= truth.drift_onset_s,
        f"{found_drift.describe()[:120]} at day {found_drift.at_s / DAY:.2f}, "
        f"{(found_drift.at_s - truth.drift_onset_s) / HOUR:.1f} h after its onset" if found_drift else "not found"))
    outcome.checks.append(("nothing on the controls and the restarts", not others,
                           "; ".join(v.describe()[:140] for v in others) or "no other verdict"))
    hours = np.array([m[0] for m in outcome.memory])
    # Judged after the first virtual hour on a run of days (the figure). A scaled run is
    # judged on its second half: in its first, every detector starts (warm-up, the first LEAK test
    # at 3 h) and loads what it needs once, which a run of days spreads over its first day.
    since_h = 1.0 if truth.days >= SCALED_DAYS else truth.run_s / HOUR / 2
    for column, name in ((1, "VmRSS"), (2, "RssAnon")):
        values = np.array([m[column] for m in outcome.memory]) / MIB
        keep = hours >= since_h
        if keep.sum() >= 3:
            slope = float(stats.theilslopes(values[keep], hours[keep] / 24.0)[0])
            outcome.checks.append((f"aggregator + store writer {name} flat after virtual hour {since_h:g}",
                                   slope < GOAL_MIB_PER_DAY,
                                   f"{slope:+.3f} MiB per virtual day ({values[keep][0]:.1f} -> {values[-1]:.1f} MiB)"))
    outcome.checks.append(("engine report on the day-end store", outcome.report_exit in (0, 1),
                           f"{outcome.report_s:.1f} s, report.html {outcome.html_bytes / 1e6:.2f} MB, store "
                           f"{outcome.store_bytes / 1e6:.0f} MB"))


def render(outcome: Outcome) -> str:
    lines = [f"compressed run: {outcome.days:g} virtual days, {outcome.records:,} records in {outcome.messages:,} "
             f"messages, fed in {outcome.feed_s:.0f} s "
             f"({outcome.days * DAY / max(outcome.feed_s, 1e-9):,.0f}x real time)",
             f"store at the end: {outcome.store_bytes / 1e6:.1f} MB; engine report: {outcome.report_s:.1f} s, "
             f"report.html {outcome.html_bytes / 1e6:.2f} MB",
             "verdicts:"]
    lines += [f"  [{v['state']}] {v['text']}" for v in outcome.verdicts] or ["  none"]
    lines.append("checks:")
    lines += [f"  {'ok  ' if held else 'FAIL'} {what}: {measured}" for what, held, measured in outcome.checks]
    lines.append("PASS" if outcome.passed else "FAIL")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=float, default=6.5, help="virtual days (default 6.5; the tests run less)")
    parser.add_argument("--records", type=int, default=240, help="records per model and 60 s window (default 240)")
    parser.add_argument("--json", type=Path, help="write the outcome as JSON here")
    parser.add_argument("--keep", type=Path, help="keep the run directory (store and reports) here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    truth = Truth(args.days)
    tmp = Path(tempfile.mkdtemp(prefix="soak-compressed-"))
    run_dir = tmp / "soak"
    run_dir.mkdir()
    try:
        print(f"compressing {args.days:g} days: leak from day {truth.leak_onset_s / DAY:.2f}, drift from day "
              f"{truth.drift_onset_s / DAY:.2f}, worker restart at day {truth.worker_restart_s / DAY:.2f}, stub "
              f"restart at hour {truth.stub_restart_s / HOUR:.1f}", flush=True)
        outcome = feed_run(truth, run_dir, args.records, not args.quiet)
        outcome.store_bytes = sum(p.stat().st_size for p in run_dir.glob("run.sqlite*"))
        build_report(run_dir, outcome)
        judge(truth, run_dir, outcome)
        print(render(outcome), flush=True)
        if args.json:
            args.json.write_bytes(orjson.dumps(dataclasses.asdict(outcome) | {"passed": outcome.passed},
                                               option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        if args.keep:
            shutil.copytree(run_dir, args.keep, dirs_exist_ok=True)
        return 0 if outcome.passed else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
