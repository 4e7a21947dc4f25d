"""A run's report, built from its store alone: the same code for a run that ended normally and
for the store of one that was killed (then the report says so and holds what was committed).

`report.json` is this dataclass tree (documented in SCHEMA.md beside this file); its `schema_version` changes
whenever a field changes meaning or goes away."""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from engine.aggregator.windows import merge_windows
from engine.detectors.verdict import Verdict
from engine.live_status import LiveStatus
from engine.series_names import (
    BUDGET_FIELDS,
    MEM_AVAILABLE,
    PSI_SOME_AVG10,
    budget_series,
    field_of,
    is_process_series,
    is_shm_series,
    split_target,
)
from engine.store import RunStore

from .stress_report import DESCRIPTIONS

SCHEMA_VERSION = 1
FAILING_STATES = ("open", "cleared")
# A lost server fails the run even when it came back; the engine's own aggregator restarting does
# not (its incident says what was lost), unless the run had to stop.
FAILING_INCIDENTS = ("server exited", "stopped answering", "fatal verdict", "the run stops")
SUMMARY_FIELDS = ("rss_anon", "rss_shmem", "fds", "threads", "cpu_s")


@dataclass(frozen=True)
class ScenarioRow:
    scenario: str
    plans: int
    failed: int
    requests: int
    description: str


@dataclass(frozen=True)
class LatencyRow:
    """One (model, scenario, protocol) over the whole run, from its merged windows."""

    model: str
    scenario: str
    protocol: str
    requests: int
    ok: int
    errors: int
    wrong: int
    expected_errors: int
    missing_errors: int
    throughput: float  # requests/s over the windows that held any
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class ServerSummary:
    """One server of the run (the only one, or one of a fleet): its share of the load, its
    latency and the verdicts that name it. `latency` rows are this server's alone; the report's
    top-level `latency` is the total over every server."""

    name: str  # "" for the single server of a one-server run
    url: str  # its HTTP address
    host: str  # the node it runs on, as configured
    weight: float
    requests: int
    ok: int
    errors: int
    wrong: int
    expected_errors: int
    missing_errors: int
    throughput: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    latency: list[LatencyRow]
    verdicts: list[int]  # ids of the verdicts whose subject names this server (all of them with one)


@dataclass(frozen=True)
class VerdictEntry:
    id: int
    state: str
    failing: bool
    detector: str
    kind: str
    subject: str
    since_s: float
    at_s: float
    size: float
    unit: str
    low: float
    high: float
    evidence: dict[str, Any]
    samples: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class ResourceSummary:
    series: str
    first: float
    last: float
    min: float
    max: float
    samples: int


@dataclass(frozen=True)
class BudgetSummary:
    """The host's large-request budget at the end of the run (its counters only grow)."""

    limit_bytes: float
    peak_bytes: float  # the most bytes of large requests in flight at once
    granted: int
    waits: int  # large requests that waited for their turn
    wait_s: float  # their wait, in total
    skipped: int  # large requests not sent: they waited their whole allowance


@dataclass(frozen=True)
class HostMemoryReport:
    """The host's memory over the run, from the monitor's host/ and budget/ series."""

    min_available_bytes: float | None  # None: /proc/meminfo was not read
    max_psi_some_avg10: float | None  # percent; None: the kernel has no PSI
    hold_s: float  # run seconds under the memory-pressure hold of large requests
    budget: BudgetSummary | None  # None: the run had no budget (an attached or remote server)


@dataclass(frozen=True)
class RunReport:
    schema_version: int
    run_id: str
    started: str
    duration_s: float
    ended_normally: bool  # False: the store of a run that was killed, or whose aggregator was
    verdict: str  # PASS or FAIL
    exit_code: int
    scenarios: list[ScenarioRow]
    verdicts: list[VerdictEntry]
    incidents: list[tuple[float, str]]
    latency: list[LatencyRow]
    resources: list[ResourceSummary]
    events: dict[str, int]  # what -> count
    first_texts: dict[str, str]  # "what in scenario" -> its first text
    figures: dict[str, Any]  # the aggregator's last live figures (lost messages, late records, ...)
    config: dict[str, Any] = field(default_factory=dict)
    servers: list[ServerSummary] = field(default_factory=list)
    host_memory: HostMemoryReport | None = None  # None: a store without the host's series

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)


def _latency(store: RunStore, windows: list | None = None) -> list[LatencyRow]:
    """Per (model, scenario, protocol), merged over every server (or over `windows` alone)."""
    groups = collections.defaultdict(list)
    for w in store.windows() if windows is None else windows:
        groups[(w.model, w.scenario, w.protocol)].append(w)
    rows = []
    for (model, scenario, protocol), windows in sorted(groups.items()):
        h = merge_windows(windows)
        span = sum(w.length_s for w in windows)
        total = {name: sum(getattr(w, name) for w in windows)
                 for name in ("requests", "ok", "errors", "wrong", "expected_errors", "missing_errors")}
        ms = 1e-6
        rows.append(LatencyRow(model, scenario, protocol, **total, throughput=total["requests"] / span if span else 0.0,
                               mean_ms=h.mean_ns * ms, p50_ms=h.percentile(50) * ms, p90_ms=h.percentile(90) * ms,
                               p95_ms=h.percentile(95) * ms, p99_ms=h.percentile(99) * ms, max_ms=h.max_ns * ms))
    return rows


def _resources(store: RunStore) -> list[ResourceSummary]:
    out = []
    for name in store.series_names():
        plain = split_target(name)[1]  # a fleet's series: target/<server>/proc/...
        if not (is_process_series(plain) and field_of(plain) in SUMMARY_FIELDS) and not is_shm_series(plain):
            continue
        _, values = store.series(name)
        if len(values):
            out.append(ResourceSummary(name, float(values[0]), float(values[-1]), float(values.min()),
                                       float(values.max()), len(values)))
    return out


def host_series(store: RunStore, plain: str) -> list[str]:
    """The stored series named `plain`, with or without a fleet's target/<server>/ prefix (every
    monitor of a fleet on one host reads the same host)."""
    return [name for name in store.series_names() if split_target(name)[1] == plain]


def hold_spans(t: np.ndarray, v: np.ndarray) -> list[tuple[float, float]]:
    """(from, to) run seconds of each stretch of `budget/pressure` samples that held: from the first
    sample that held to the first that did not (or the last sample)."""
    spans = []
    start = None
    for time_s, value in zip(t.tolist(), v.tolist()):
        if value >= 0.5 and start is None:
            start = time_s
        elif value < 0.5 and start is not None:
            spans.append((start, time_s))
            start = None
    if start is not None:
        spans.append((start, float(t[-1])))
    return spans


def _host_memory(store: RunStore) -> HostMemoryReport | None:
    available = [v for v in (store.series(name)[1] for name in host_series(store, MEM_AVAILABLE)) if len(v)]
    psi = [v for v in (store.series(name)[1] for name in host_series(store, PSI_SOME_AVG10)) if len(v)]
    budget = {f: host_series(store, budget_series(f)) for f in BUDGET_FIELDS}
    if not available and not psi and not budget["limit_bytes"]:
        return None
    summary, hold_s = None, 0.0
    if budget["limit_bytes"]:  # one budget per host: the first monitor that sampled it
        last = {f: float(store.series(names[0])[1][-1]) if names else 0.0 for f, names in budget.items()}
        summary = BudgetSummary(last["limit_bytes"], last["peak_bytes"], int(last["granted"]), int(last["waits"]),
                                last["wait_s"], int(last["skipped"]))
        if budget["pressure"]:
            hold_s = sum(b - a for a, b in hold_spans(*store.series(budget["pressure"][0])))
    return HostMemoryReport(
        min_available_bytes=min(float(v.min()) for v in available) if available else None,
        max_psi_some_avg10=max(float(v.max()) for v in psi) if psi else None,
        hold_s=hold_s, budget=summary)


def _servers(store: RunStore, info_config: dict[str, Any], verdicts: list[VerdictEntry]) -> list[ServerSummary]:
    """A section per server: the fleet's `[[targets]]` as the run recorded them, or the one server."""
    targets = info_config.get("targets")
    if not targets:  # a store from before fleets: its one server, from the resolved config
        server = info_config.get("config", {}).get("server", {})
        targets = [{"name": "", "http": server.get("url", "") or server.get("host", ""), "host": "", "weight": 1.0}]
    by_target = collections.defaultdict(list)
    for w in store.windows():
        by_target[w.target].append(w)
    out = []
    for t in targets:
        name = t.get("name", "")
        windows = by_target.get(name, [])
        h = merge_windows(windows)
        span = len({w.start_s for w in windows}) * (windows[0].length_s if windows else 0.0)
        total = {k: sum(getattr(w, k) for w in windows)
                 for k in ("requests", "ok", "errors", "wrong", "expected_errors", "missing_errors")}
        named = [v.id for v in verdicts if not name or v.subject.endswith(f" on {name}") or f" on {name} " in v.subject]
        out.append(ServerSummary(
            name=name, url=t.get("http", ""), host=t.get("host", ""), weight=float(t.get("weight", 1.0)), **total,
            throughput=total["requests"] / span if span else 0.0, p50_ms=h.percentile(50) * 1e-6,
            p99_ms=h.percentile(99) * 1e-6, max_ms=h.max_ns * 1e-6, latency=_latency(store, windows), verdicts=named))
    return out


def _stored_fields(verdict: Verdict) -> dict[str, Any]:
    """A verdict's fields as the store keeps them (its `fault` key lives only while the run goes)."""
    fields = dataclasses.asdict(verdict)
    del fields["fault"]
    return fields


def answer_check_line(figures: dict[str, Any]) -> str:
    """How the answers were checked, in one line; "" when every answer was compared in full (the
    default, [workers] validate = "all"), or when the store predates the counts."""
    compared, sampled, skipped = (list(figures.get("answers") or ()) + [0, 0, 0])[:3]
    if not sampled and not skipped:
        return ""
    return (f"answers ([workers] validate): {compared - sampled:,} compared in full, {sampled:,} passed on "
            f"sampled pages alone, {skipped:,} not compared")


def build_report(store: RunStore) -> RunReport:
    info = store.run_info()
    status = store.status() or LiveStatus()
    scenarios = [ScenarioRow(*row, DESCRIPTIONS.get(row[0], "")) for row in store.totals()]
    verdicts = [VerdictEntry(row.id, row.state, row.state in FAILING_STATES, **_stored_fields(row.verdict),
                             text=row.verdict.describe()) for row in store.verdicts()]
    incidents = store.incidents()
    events: collections.Counter[str] = collections.Counter()
    first_texts: dict[str, str] = {}
    for event in store.events():
        events[event.what] += event.count
        key = f"{event.what} in {event.scenario}" if event.scenario else event.what
        if event.text and key not in first_texts:
            first_texts[key] = event.text
    failed = sum(s.failed for s in scenarios)
    failing = any(v.failing for v in verdicts) or failed > 0 or any(
        marker in what for _, what in incidents for marker in FAILING_INCIDENTS)
    ended = status.final
    ok = not failing and ended
    return RunReport(
        schema_version=SCHEMA_VERSION, run_id=info.run_id, started=info.started,
        duration_s=status.time_s, ended_normally=ended, verdict="PASS" if ok else "FAIL",
        exit_code=0 if ok else 1, scenarios=scenarios, verdicts=verdicts, incidents=incidents,
        latency=_latency(store), resources=_resources(store), events=dict(events), first_texts=first_texts,
        figures=status.as_dict(), config=info.config, servers=_servers(store, info.config, verdicts),
        host_memory=_host_memory(store),
    )


def load_report(run_dir: Path) -> RunReport:
    store = RunStore.open(Path(run_dir) / "run.sqlite")
    try:
        return build_report(store)
    finally:
        store.close()
