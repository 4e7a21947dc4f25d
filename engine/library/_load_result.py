"""What the load generator gives back: every request as numpy columns (`Records`), fixed time
windows of them folded by the aggregator's own code (`WindowTable`), and the totals per plan."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from engine.aggregator.windows import WindowFolder
from workers.telemetry import STATUS_ERROR, STATUS_MISSING_ERROR, STATUS_NAMES, STATUS_OK, STATUS_WRONG, RecordBatch

WINDOW_PROTOCOL = "load"  # the windows' protocol label (a load run has one protocol; the folder wants a name)


@dataclass(frozen=True)
class Records:
    """One row per request, in the order the requests completed in each batch."""

    start_ns: np.ndarray  # int64, time.monotonic_ns(); open loop: when the request was due (no coordinated omission)
    latency_ns: np.ndarray  # int64, until the answer (or the error) came back
    status: np.ndarray  # uint8: STATUS_NAMES[code]: ok, error, wrong, expected_error, missing_error
    plan: np.ndarray  # uint16: index of the LoadPlan the request belongs to
    sequence_id: np.ndarray  # uint64: correlation id of a sequence's step, 0 for a stateless request
    step: np.ndarray  # int32: position of the request in its plan (0 for a single request, else its sequence step)

    STATUS_NAMES = STATUS_NAMES

    def __len__(self) -> int:
        return len(self.start_ns)

    @property
    def latency_ms(self) -> np.ndarray:
        return self.latency_ns / 1e6

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the requests answered correctly."""
        return self.status == STATUS_OK

    def select(self, mask: np.ndarray) -> Records:
        """The rows where `mask` (boolean, or indices) holds."""
        return Records(**{f.name: getattr(self, f.name)[mask] for f in fields(self)})

    @classmethod
    def empty(cls) -> Records:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(0, np.uint16),
                   np.zeros(0, np.uint64), np.zeros(0, np.int32))


@dataclass(frozen=True)
class WindowTable:
    """Requests folded into fixed windows by when they completed, one row per window that held any
    (numpy columns of equal length). Latency is of the answered requests (ok and wrong)."""

    length_s: float
    start_s: np.ndarray  # window start, seconds after the load began
    requests: np.ndarray
    ok: np.ndarray
    errors: np.ndarray
    wrong: np.ndarray
    throughput: np.ndarray  # requests / length_s
    mean_ms: np.ndarray
    p50_ms: np.ndarray
    p90_ms: np.ndarray
    p95_ms: np.ndarray
    p99_ms: np.ndarray
    max_ms: np.ndarray

    def __len__(self) -> int:
        return len(self.start_s)


@dataclass(frozen=True)
class PlanTotals:
    """One plan's count: plans run (a request, or a whole sequence), those that failed, requests sent."""

    model: str
    scenario: str  # its name in the worker's tables ("load:<model>")
    plans: int
    failed: int
    requests: int


@dataclass(frozen=True)
class LoadEvent:
    """Something the executor said: a failed plan with its first text ("scenario_failed"), a shared
    memory fallback, ... `count` of them when the text was left out (after the first few)."""

    what: str
    model: str
    text: str
    count: int


@dataclass(frozen=True)
class LoadResult:
    records: Records
    run_id: str  # in the names of the shared-memory regions the load used (tee_<run id>_w0_<n>)
    totals: tuple[PlanTotals, ...]  # one per LoadPlan, in order
    events: tuple[LoadEvent, ...]
    started_ns: int  # time.monotonic_ns() as the load began: the origin of windows
    duration_s: float  # of the load
    protocol: str
    shm: str  # the shared memory the requests used: none, system or cuda
    dropped: int = 0  # records the telemetry pipe could not carry (0 unless the host is starved)

    @property
    def passed(self) -> bool:
        """Every plan answered, correctly where `expected` was given."""
        return not any(t.failed for t in self.totals) and not bool(np.isin(
            self.records.status, (STATUS_ERROR, STATUS_WRONG, STATUS_MISSING_ERROR)).any())

    def failures(self) -> list[str]:
        """The first texts of the failed plans (errors, and wrong answers quoted against the expected)."""
        return [e.text for e in self.events if e.what == "scenario_failed" and e.text]

    def windows(self, length_s: float = 1.0, plan: int | None = None) -> WindowTable:
        """The records (of one plan, by index, or all) folded into windows of `length_s` by the
        aggregator's window code: counts, throughput and latency percentiles per window."""
        records = self.records if plan is None else self.records.select(self.records.plan == plan)
        folder = WindowFolder(self.started_ns, length_s, lateness_s=0.0)
        zeros = np.zeros(len(records), np.uint16)
        folder.add(RecordBatch(WINDOW_PROTOCOL, ("all",), ("all",), {
            "start_ns": records.start_ns, "latency_ns": records.latency_ns, "model": zeros, "scenario": zeros,
            "status": records.status, "sequence_id": records.sequence_id, "step": records.step}))
        rows = folder.close_all()
        columns = ("start_s", "requests", "ok", "errors", "wrong", "throughput", "mean_ms", "p50_ms", "p90_ms",
                   "p95_ms", "p99_ms", "max_ms")
        return WindowTable(length_s, **{name: np.array([getattr(w, name) for w in rows],
                                                       dtype=np.int64 if name in ("requests", "ok", "errors", "wrong")
                                                       else np.float64) for name in columns})


def concat_records(batches: Sequence[RecordBatch], plan_of: dict[str, int]) -> Records:
    """The batches' columns end to end; each batch's scenario codes become plan indices."""
    if not batches:
        return Records.empty()
    plans = [np.array([plan_of.get(name, 0) for name in b.scenarios], np.uint16)[b.columns["scenario"]]
             for b in batches]
    column = {name: np.concatenate([b.columns[name] for b in batches])
              for name in ("start_ns", "latency_ns", "status", "sequence_id", "step")}
    return Records(plan=np.concatenate(plans), **column)
