"""The aggregator process: reads every telemetry message of the run (workers' records, heartbeats
and events, the monitor's resource samples), folds records into windows, runs the detectors as
the run goes on, writes everything to the run's store, and keeps the live figures there.

It is the store's only writer. It commits at least once a second, so a run killed at any moment
keeps everything up to its last second. SIGTERM: drain what is still queued, close the open
windows, evaluate once more, write the totals, exit.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import multiprocessing
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from engine.cluster.keys import ServerKeys, leaves_host, secure_server
from engine.detectors.errors import ErrorDetector
from engine.detectors.settings import DetectorSettings
from engine.detectors.stall import ModelTiming, StallDetector, StallView
from engine.detectors.verdict import Verdict
from engine.live_status import LiveStatus
from engine.store import RunStore
from workers.heap_probe import HeapProbe
from workers.process_setup import enter_process, spawn
from workers.telemetry import (
    INCIDENT,
    KIND_BATCH,
    KIND_EVENT,
    KIND_HEARTBEAT,
    KIND_RESOURCES,
    Event,
    Heartbeat,
    Message,
    ResourceSample,
    decode_batch,
    unpack,
)

from ..window_stats import WindowStats
from .client_health import ClientHealth
from .drift_watch import DriftWatch
from .histogram import LatencyHistogram
from .resources import ResourceWatch
from .stages import StageWatch
from .windows import WindowFolder

TICK_S = 1.0  # windows closed, detectors run, store committed, status written
HEARTBEAT_MISSING_S = 3.0  # a worker silent this long is missing: its in-flight table is not evidence
SAMPLE_TEXTS = 5
# Verdicts that explain rather than fail: a growth that stopped (PLATEAU), memory held by queued
# requests (BACKLOG: the stuck model behind it has its own STALL).
INFO_KINDS = ("PLATEAU", "BACKLOG")
RECENT_WINDOWS = 5  # the live figures' "worst recent p99" spans this many windows
# The coordinator's event when it stops the load: memory and latency after it say nothing about
# the load (a heap stops growing when requests stop), so leak and drift are not judged on them.
LOAD_STOPPED = "load_stopped"
# A worker's batch leaves 250 ms after the last (workers.sender.FLUSH_INTERVAL_NS), checked on a
# 100 ms tick: what it answered in up to 350 ms before a SIGKILL never left.
UNSENT_WINDOW_S = 0.35
WORKER_GONE = "worker_gone"  # the coordinator saw a worker die; text: its sender name
UNCOUNTED = "uncounted_in_flight"  # count: requests a dead worker had on the wire, never reported
# INCIDENT (workers.telemetry): the coordinator's and monitor's incidents, kept in their own table too


@dataclass(frozen=True)
class AggregatorSpec:
    run_id: str
    endpoint: str  # where it binds its PULL socket
    store_path: str
    config_json: str
    started_wall: str
    origin_ns: int  # monotonic ns of the run's time zero (the same clock in every process)
    run_s: float  # planned run length
    settings: DetectorSettings
    timings: dict[str, ModelTiming] = field(default_factory=dict)
    prometheus_port: int = 0  # 0 = no endpoint
    # A second PULL socket for senders on other hosts (Ray actors): "" = none. When it listens
    # beyond loopback it is a CURVE server that lets in only the run's client key (`curve`).
    remote_endpoint: str = ""
    curve: ServerKeys | None = None


@dataclass
class _Sender:
    next_seq: int = 0
    lost: int = 0
    last_heartbeat: float = 0.0  # monotonic s
    heartbeat: Heartbeat | None = None  # its last (a worker's)
    plans: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # its plan totals per scenario
    answers: tuple[int, int, int] = (0, 0, 0)  # how its answers were checked (Heartbeat.answers)
    rate: float = 0.0  # records/s between its last two heartbeats


class Aggregator:
    def __init__(self, spec: AggregatorSpec, context: zmq.Context | None = None,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.spec = spec
        # Every time the aggregator reads (window closes, heartbeat ages, run seconds) comes from
        # this clock: the monotonic one in a run, a virtual one when a test or tools/soak compresses
        # days into minutes.
        self._clock = clock
        s = spec.settings
        self.store = RunStore.create(spec.store_path, spec.run_id, spec.config_json, spec.started_wall)
        context = context or zmq.Context.instance()
        self._socket = context.socket(zmq.PULL)
        self._socket.setsockopt(zmq.RCVHWM, 100_000)
        self._socket.bind(spec.endpoint)
        self._sockets = [self._socket]
        self._auth = None
        if spec.remote_endpoint:
            remote = context.socket(zmq.PULL)
            remote.setsockopt(zmq.RCVHWM, 100_000)
            if leaves_host(spec.remote_endpoint):
                if spec.curve is None:
                    raise ValueError(f"{spec.remote_endpoint} listens beyond loopback: it needs the run's CURVE keys")
                self._auth = secure_server(remote, spec.curve, context)
            remote.bind(spec.remote_endpoint)
            self._sockets.append(remote)
        self._poller = zmq.Poller()
        for socket in self._sockets:
            self._poller.register(socket, zmq.POLLIN)
        self.folder = WindowFolder(spec.origin_ns, s.window_s)
        self.senders: dict[str, _Sender] = collections.defaultdict(_Sender)
        self.last_answer: dict[str, float] = {}
        self.completed: collections.Counter[str] = collections.Counter()
        self.resources = ResourceWatch(s, spec.run_s)
        self.texts: dict[str, list[str]] = collections.defaultdict(list)  # scenario -> first error texts
        self._missing: set[str] = set()  # workers whose heartbeats stopped (reported once)
        self.drift = DriftWatch(s)
        self.health = ClientHealth()
        self.stages = StageWatch.for_settings(s)  # each model's stage metrics over a drift's spans
        self.stall = StallDetector(s.stall, spec.timings)
        self.errors = ErrorDetector(tuple(d for d in s.enabled if d in ("errors", "wrong_answers")))
        self.model_latency: dict[str, LatencyHistogram] = {}  # after warm-up, for the stall threshold
        self.load_stopped_s: float | None = None
        self.bad_messages = 0
        self.requests = 0
        self.failed_requests = 0  # errors and missing expected errors, from closed windows
        self.wrong_answers = 0
        self.verdicts: list[tuple[int, Verdict]] = []
        self._growth_ids: dict[str, int] = {}
        self._fault_ids: dict[str, int] = {}  # Verdict.fault -> id of the verdict that said it
        self._recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=11)
        # (window start, p99) of the windows closed within the last RECENT_WINDOWS window lengths
        self._recent_p99: collections.deque[tuple[float, float]] = collections.deque()
        self._resume(self.store)
        self.prometheus = None
        if spec.prometheus_port:
            from .prometheus import PrometheusEndpoint
            self.prometheus = PrometheusEndpoint(spec.prometheus_port)

    def _resume(self, store: RunStore) -> None:
        """A restarted aggregator goes on from what its predecessor committed: the counters, the
        verdicts, each sender's plan totals and message sequence (so the gap is counted as the
        messages lost while nobody listened). Open windows and detector history died with it."""
        figures = store.status()
        if figures is None:
            return
        self.requests = figures.requests
        self.failed_requests = figures.errors
        self.wrong_answers = figures.wrong
        for name, (next_seq, plans, *rest) in figures.senders.items():
            self.senders[name].next_seq = int(next_seq)
            self.senders[name].plans = {scenario: tuple(row) for scenario, row in plans.items()}
            if rest:  # written by an engine that kept the answer counts too
                self.senders[name].answers = tuple(int(n) for n in rest[0])[:3]  # type: ignore[assignment]
        self.verdicts = [(row.id, row.verdict) for row in store.verdicts() if row.state != "withdrawn"]

    # -- time -----------------------------------------------------------------------------
    def _now_s(self) -> float:
        """The clock in seconds (monotonic in a run): heartbeat ages are measured on it."""
        return self._clock() / 1e9

    def run_s(self, monotonic_ns: int | None = None) -> float:
        return ((monotonic_ns if monotonic_ns is not None else self._clock()) - self.spec.origin_ns) / 1e9

    # -- messages -------------------------------------------------------------------------
    def poll(self, timeout_s: float) -> int:
        handled = 0
        ready = [socket for socket, _ in self._poller.poll(int(timeout_s * 1000))]
        for socket in ready:
            handled += self._drain(socket)
        return handled

    def _drain(self, socket: zmq.Socket) -> int:
        handled = 0
        while True:
            try:
                data = socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return handled
            try:
                self.handle(unpack(data))
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                # A malformed message is a finding, not the end of the run's record.
                self.bad_messages += 1
                if self.bad_messages <= SAMPLE_TEXTS:
                    self.store.add_event(self.run_s(), "aggregator", "bad_message", "", "", 1,
                                         f"{type(exc).__name__}: {exc}"[:500])
            handled += 1

    def handle(self, message: Message) -> None:
        sender = self.senders[message.sender]
        if message.seq > sender.next_seq:
            sender.lost += message.seq - sender.next_seq
        sender.next_seq = message.seq + 1
        if message.kind == KIND_BATCH:
            self._batch(message)
        elif message.kind == KIND_HEARTBEAT:
            beat = Heartbeat.from_body(message.body)
            sender.last_heartbeat = self._now_s()
            if message.sender.startswith("worker"):
                at = self.run_s(beat.time_ns or self._clock())
                change = self.health.beat(message.sender, at, beat)
                if change is not None:  # a worker became its own bottleneck, or stopped being one
                    what, text = change
                    self.store.add_event(at, "aggregator", what, "", "", 1, text)
            before, sender.heartbeat, sender.plans, sender.answers = sender.heartbeat, beat, beat.plans, beat.answers
            if before is not None:
                seconds = (beat.time_ns - before.time_ns) / 1e9
                if seconds > 0:
                    sender.rate = (beat.records_sent - before.records_sent) / seconds
        elif message.kind == KIND_EVENT:
            self._event(message)
        elif message.kind == KIND_RESOURCES:
            self._resources(ResourceSample.from_body(message.body))

    def _batch(self, message: Message) -> None:
        batch = decode_batch(message)
        self.folder.add(batch)
        codes = batch.columns["model"]
        ends = batch.columns["start_ns"] + batch.columns["latency_ns"]
        self.requests += len(batch)
        if len(batch.models) == 1:  # a worker with one model (a user's [[load]]): no split by code
            self._answered(batch.models[0], len(batch), int(ends.max()))
            return
        for code, count in enumerate(np.bincount(codes).tolist()):
            if count:
                self._answered(batch.models[code], count, int(ends[codes == code].max()))

    def _answered(self, model: str, count: int, last_ns: int) -> None:
        """`count` answers of `model` came in a batch, the last at `last_ns`."""
        self.completed[model] += count
        last = self.run_s(last_ns)
        if last > self.last_answer.get(model, -1e18):
            self.last_answer[model] = last

    def _event(self, message: Message) -> None:
        event = Event.from_body(message.body)
        at = self.run_s(event.time_ns or self._clock())
        if event.what == LOAD_STOPPED:
            self.load_stopped_s = at
        elif event.what == INCIDENT:
            self.store.add_incident(at, event.text)
        elif event.what == WORKER_GONE:
            self._worker_gone(at, event.text)
        self.store.add_event(at, message.sender, event.what, event.model, event.scenario, event.count, event.text)
        scenario_texts = self.texts[event.scenario]
        if event.text and len(scenario_texts) < SAMPLE_TEXTS:
            scenario_texts.append(event.text)

    def _resources(self, sample: ResourceSample) -> None:
        at = self.run_s(sample.time_ns or self._clock())
        samples = sample.samples
        self.store.add_resources(at, samples)
        self.resources.add(at, samples, self.requests, self.completed)
        self.stages.add(at, samples)

    # -- ticks ------------------------------------------------------------------------------
    def tick(self, final: bool = False) -> list[Verdict]:
        now_ns = self._clock()
        now = self.run_s(now_ns)
        closed = self.folder.close_all() if final else self.folder.close_until(now_ns)
        if closed:
            self.store.add_windows(closed)
            self.failed_requests += sum(w.errors + w.missing_errors for w in closed)
            self.wrong_answers += sum(w.wrong for w in closed)
        raised = self._evaluate(closed, now)
        self._missing_workers(now)
        self._recent.append((now, self.requests))
        status = self.status(now, closed)
        status.final = final  # a report of a store without it says the run did not end normally
        self.store.set_status(status)
        self.store.set_totals(self.totals())
        self.store.commit()
        if self.prometheus is not None:
            self.prometheus.update(_gauges(status))
        return raised

    def _evaluate(self, closed: list[WindowStats], now: float) -> list[Verdict]:
        enabled = self.spec.settings.enabled
        raised: list[Verdict] = []
        if closed:
            raised += self.errors.evaluate(closed, now, self.texts)
            self._fold_latency(closed)
        loaded = [w for w in closed if self.load_stopped_s is None or w.start_s + w.length_s <= self.load_stopped_s]
        # Windows where the engine was its own bottleneck say nothing of the server's latency.
        fair = [w for w in loaded if not self.health.bound(w.start_s, w.start_s + w.length_s)]
        self.health.held_windows += len(loaded) - len(fair)
        loaded = fair
        if "drift" in enabled:
            raised += self.drift.evaluate(loaded, now, self.stages)
        if "stall" in enabled:
            raised += self.stall.evaluate(self._stall_view(now), self._p999())
            self._update(self.stall.take_updates())
        if "leak" in enabled and self.load_stopped_s is None:
            raised += self.resources.evaluate(now)
        raised.sort(key=lambda v: v.detector != "stall")  # a stall first: the errors it causes point at it
        for index, verdict in enumerate(raised):
            verdict = raised[index] = self._after_stall(verdict)
            state = "info" if _informational(verdict) else "open"
            verdict_id = self.store.add_verdict(verdict, state=state)
            if verdict.fault:
                self._fault_ids[verdict.fault] = verdict_id
            if verdict.kind == "GROWTH":
                self._growth_ids[verdict.subject] = verdict_id
            elif verdict.kind == "PLATEAU" and verdict.subject in self._growth_ids:
                self.store.set_verdict_state(self._growth_ids.pop(verdict.subject), "withdrawn")
            self.verdicts.append((verdict_id, verdict))
        return raised

    def _after_stall(self, verdict: Verdict) -> Verdict:
        """Errors of a model that has a STALL are what the stall does to its requests (they time
        out, or fail when the stuck instance is killed): one fault, one verdict. They are kept as
        information pointing at the stall's verdict, which fails the run."""
        if verdict.kind != "ERRORS":
            return verdict
        stall_id = self._fault_ids.get(f"stall:{verdict.subject.split(' in ', 1)[0]}")
        if stall_id is None:
            return verdict
        return dataclasses.replace(verdict, evidence={**verdict.evidence, "stall_verdict_id": float(stall_id)})

    def _update(self, updates: list[Verdict]) -> None:
        """Later evidence of a fault already said: its verdict is updated, not repeated."""
        for verdict in updates:
            verdict_id = self._fault_ids.get(verdict.fault)
            if verdict_id is None:
                continue  # raised before a restart of the aggregator: kept as it was said
            self.store.update_verdict(verdict_id, verdict)
            self.verdicts = [(i, verdict if i == verdict_id else v) for i, v in self.verdicts]

    def _fold_latency(self, closed: list[WindowStats]) -> None:
        warm = self.spec.settings.leak.warmup_s
        for w in closed:
            if w.start_s >= warm and w.histogram:
                histogram = LatencyHistogram.from_bytes(w.histogram)
                if w.model in self.model_latency:
                    self.model_latency[w.model].merge(histogram)
                else:
                    self.model_latency[w.model] = histogram

    def _p999(self) -> dict[str, float]:
        return {m: h.percentile(99.9) / 1e9 for m, h in self.model_latency.items() if h.count >= 1000}

    def _stall_view(self, now: float) -> StallView:
        """The stall detector's evidence from the workers with fresh heartbeats: per model, the
        oldest request that is not a sequence's START, its requests in flight, and its STARTs
        (which may wait in the sequence backlog for a slot): how many, and since when."""
        fresh = self._now_s() - HEARTBEAT_MISSING_S
        oldest: dict[str, float] = {}
        in_flight: dict[str, int] = {}
        starts: dict[str, tuple[int, float]] = {}
        sequences: dict[tuple[str, str], tuple[float, int]] = {}
        for sender in self.senders.values():
            beat = sender.heartbeat
            if beat is None or sender.last_heartbeat < fresh:
                continue
            names = beat.models
            for code, start_ns in beat.oldest_by_model.items():
                name = _model_name(names, code)
                oldest[name] = min(oldest.get(name, now), self.run_s(start_ns))
            for code, count in beat.in_flight_by_model.items():
                name = _model_name(names, code)
                in_flight[name] = in_flight.get(name, 0) + count
            for code, (count, start_ns) in beat.starts_by_model.items():
                name = _model_name(names, code)
                waiting, first = starts.get(name, (0, now))
                starts[name] = (waiting + count, min(first, self.run_s(start_ns)))
            for sequence, (code, last_ns, step) in beat.open_sequences.items():
                sequences[(_model_name(names, code), sequence)] = (self.run_s(last_ns), step)
        since = min([*oldest.values(), *(first for _, first in starts.values())], default=None)
        stub_cpu = self.resources.stub_cpu_since(since) if since is not None else {}
        return StallView(now, oldest, in_flight, dict(self.last_answer), sequences, stub_cpu,
                         dict(self.resources.pending), starts)

    def _worker_gone(self, at: float, name: str) -> None:
        """A worker died without a goodbye (SIGKILL, a crash): what the server may have answered
        for it but the run never counted is what it had on the wire at its last heartbeat, plus
        what it got after its last batch left (at most UNSENT_WINDOW_S before it died)."""
        sender = self.senders.get(name)
        if sender is None or not sender.last_heartbeat:
            text = f"{name} died before its first heartbeat: none of its requests is known"
            in_flight = 0
        else:
            in_flight = sender.heartbeat.in_flight if sender.heartbeat is not None else 0
            unsent = math.ceil(sender.rate * UNSENT_WINDOW_S)
            text = (f"{name} died: up to about {in_flight + unsent} of its requests are not counted (the server "
                    f"may have counted them): {in_flight} in flight at its last heartbeat "
                    f"({self._now_s() - sender.last_heartbeat:.1f} s before), and about {unsent} answered after "
                    f"its last batch left ({sender.rate:.0f}/s for {UNSENT_WINDOW_S * 1000:.0f} ms)")
            in_flight += unsent
        self.store.add_incident(at, text)
        self.store.add_event(at, "aggregator", UNCOUNTED, "", "", in_flight, text)

    def _missing_workers(self, now: float) -> None:
        """A worker silent for 3 heartbeats is missing: said once, so a starved or dead load
        generator is on record (its in-flight table is no longer read as evidence)."""
        if self.load_stopped_s is not None:
            return
        silent = self._now_s() - HEARTBEAT_MISSING_S
        for name, sender in self.senders.items():
            if not name.startswith("worker") or not sender.last_heartbeat:
                continue
            if sender.last_heartbeat < silent and name not in self._missing:
                self._missing.add(name)
                self.store.add_event(now, "aggregator", "worker_missing", "", "",
                                     1, f"{name}: no heartbeat for {HEARTBEAT_MISSING_S:g} s")
            elif sender.last_heartbeat >= silent:
                self._missing.discard(name)

    # -- figures ----------------------------------------------------------------------------
    def totals(self) -> list[tuple[str, int, int, int]]:
        merged: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
        for sender in self.senders.values():
            for scenario, values in sender.plans.items():
                row = merged[scenario]
                for i in range(3):
                    row[i] += values[i]
        return [(name, *row) for name, row in sorted(merged.items())]  # type: ignore[misc]

    def status(self, now: float, closed: list[WindowStats]) -> LiveStatus:
        last_p99, recent_p99 = self._live_p99(closed)
        then, before = self._recent[0] if self._recent else (now, self.requests)
        workers = {name: round(self._now_s() - s.last_heartbeat, 1) for name, s in self.senders.items()
                   if name.startswith("worker") and s.last_heartbeat}
        return LiveStatus(
            time_s=now, requests=self.requests,
            rate=(self.requests - before) / (now - then) if now > then else 0.0,
            p99_ms=last_p99, p99_recent_ms=recent_p99,
            errors=self.failed_requests, wrong=self.wrong_answers,
            verdicts=[v.describe() for _, v in self.verdicts if v.kind != "PLATEAU"],
            fatal=[v.describe() for _, v in self.verdicts if v.detector in self.spec.settings.fatal
                   and not _informational(v)],
            lost_messages=sum(s.lost for s in self.senders.values()), bad_messages=self.bad_messages,
            late_records=self.folder.late_records,
            client_bound_windows=self.health.held_windows,
            heartbeat_age_s=workers,
            senders={name: [s.next_seq, s.plans, list(s.answers)] for name, s in self.senders.items()},
            answers=[sum(s.answers[i] for s in self.senders.values()) for i in range(3)],
        )

    def _live_p99(self, closed: list[WindowStats]) -> tuple[float, float]:
        """The worst p99 among the windows that closed last, and among those of the last
        RECENT_WINDOWS windows: what the latency is now, not the worst it ever was."""
        for w in closed:
            if w.ok + w.wrong:  # a window without answers has no latency
                self._recent_p99.append((w.start_s, w.p99_ms))
        if not self._recent_p99:
            return 0.0, 0.0
        newest = max(start for start, _ in self._recent_p99)
        horizon = newest - (RECENT_WINDOWS - 1) * self.spec.settings.window_s
        while self._recent_p99 and self._recent_p99[0][0] < horizon:
            self._recent_p99.popleft()
        last = max(p99 for start, p99 in self._recent_p99 if start == newest)
        return last, max(p99 for _, p99 in self._recent_p99)

    def close(self) -> None:
        for socket in self._sockets:
            socket.close(0)
        if self._auth is not None:
            self._auth.stop()
        if self.prometheus is not None:
            self.prometheus.close()
        self.store.close()


def _informational(verdict: Verdict) -> bool:
    """A verdict that explains and fails nothing: its kind says so, or it follows a stall."""
    return verdict.kind in INFO_KINDS or "stall_verdict_id" in verdict.evidence


def _model_name(names: tuple[str, ...], code: int) -> str:
    """A heartbeat's model code as its model's name."""
    return names[int(code)] if int(code) < len(names) else str(code)


def _gauges(status: LiveStatus) -> dict:
    return {
        "engine_requests_total": ("request records received", {(): float(status.requests)}),
        "engine_request_rate": ("requests per second over the last 10 s", {(): float(status.rate)}),
        "engine_window_p99_ms": ("worst p99 of the last closed windows, ms", {(): float(status.p99_ms)}),
        "engine_recent_p99_ms": (f"worst p99 of the last {RECENT_WINDOWS} windows, ms",
                                 {(): float(status.p99_recent_ms)}),
        "engine_failed_requests_total": ("failed requests and missing expected errors",
                                         {(): float(status.errors)}),
        "engine_wrong_answers_total": ("answers that failed validation", {(): float(status.wrong)}),
        "engine_verdicts": ("verdicts raised", {(): float(len(status.verdicts))}),
        "engine_telemetry_lost_messages": ("telemetry messages lost", {(): float(status.lost_messages)}),
    }


def aggregator_main(spec: AggregatorSpec) -> None:
    """Process entry point (spawn context). SIGTERM, and the coordinator's death, stop it: a killed
    coordinator still gets a drained store. SIGINT is ignored: the coordinator decides when to stop."""
    stopping: list[int] = []
    heap = enter_process(spec.run_id, "aggregator", stop=lambda: stopping.append(1), stop_on=(signal.SIGTERM,),
                         ignore=(signal.SIGINT,), watch=True)
    aggregator = Aggregator(spec)
    probe = HeapProbe.from_environment(Path(spec.store_path).parent, "aggregator")
    try:
        next_tick = time.monotonic() + TICK_S
        while not stopping:
            aggregator.poll(min(0.1, max(0.0, next_tick - time.monotonic())))
            if time.monotonic() >= next_tick:
                next_tick += TICK_S
                aggregator.tick()
                heap.tick()
                if probe is not None:
                    probe.tick()
        # Drain: the workers have stopped; what they sent last is queued here.
        while aggregator.poll(0.3):
            pass
        aggregator.tick(final=True)
    finally:
        aggregator.close()


def start_aggregator(spec: AggregatorSpec) -> multiprocessing.process.BaseProcess:
    return spawn(aggregator_main, spec, "aggregator")
