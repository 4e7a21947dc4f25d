"""The telemetry wire format: every process that reports speaks it, the aggregator reads it.

A message is one msgpack array ``[kind, sender, seq, body]``:

- ``kind``: one of the ``KIND_*`` strings below;
- ``sender``: who sent it (``"worker-3"``, ``"monitor"``);
- ``seq``: numbered per sender from 0, so the receiver counts lost messages as gaps;
- ``body``: a map whose shape the kind fixes.

Request records travel *columnar*: one ``batch`` message holds hundreds of requests as raw
little-endian numpy columns (``COLUMNS``), plus the name tables that the small integer codes of
``model`` and ``scenario`` index. Decoding a column is ``np.frombuffer``: no per-record work.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

# body: {"protocol", "models", "scenarios", "columns": {name: bytes}, "count"}, and "target" (the
# server's name) from a worker of a fleet
KIND_BATCH = "batch"
INCIDENT = "incident"  # an event's `what` for an incident of the run (the aggregator keeps them apart)
KIND_HEARTBEAT = "heartbeat"  # body: Heartbeat fields
KIND_EVENT = "event"  # body: {"what", "model", "scenario", "text", "count", "time_ns"}
KIND_RESOURCES = "resources"  # body: {"time_ns", "samples": {series name: value}}
KINDS = (KIND_BATCH, KIND_HEARTBEAT, KIND_EVENT, KIND_RESOURCES)

# Request outcome codes (the `status` column).
STATUS_OK = 0
STATUS_ERROR = 1  # the server or the transport failed the request
STATUS_WRONG = 2  # answered, but the answer failed validation
STATUS_EXPECTED_ERROR = 3  # a negative scenario got exactly the error it must get
STATUS_MISSING_ERROR = 4  # a negative scenario did not get the error it must get
STATUS_NAMES = ("ok", "error", "wrong", "expected_error", "missing_error")

# Column name -> dtype. `start_ns` is CLOCK_MONOTONIC (time.monotonic_ns), the same clock in
# every process of a host; with open-loop load it is the *intended* send time.
COLUMNS: dict[str, np.dtype] = {
    "start_ns": np.dtype("<i8"),
    "latency_ns": np.dtype("<i8"),
    "model": np.dtype("<u2"),
    "scenario": np.dtype("<u2"),
    "status": np.dtype("u1"),
    "sequence_id": np.dtype("<u8"),  # 0 for stateless requests
    "step": np.dtype("<i4"),  # position in the sequence (or the stream), -1 when none
}


def pack(kind: str, sender: str, seq: int, body: dict[str, Any]) -> bytes:
    return msgpack.packb([kind, sender, seq, body], use_bin_type=True)


@dataclass(frozen=True)
class Message:
    kind: str
    sender: str
    seq: int
    body: dict[str, Any]


def unpack(data: bytes) -> Message:
    kind, sender, seq, body = msgpack.unpackb(data, raw=False)
    if kind not in KINDS:
        raise ValueError(f"unknown telemetry message kind {kind!r} from {sender!r}")
    return Message(kind, sender, seq, body)


@dataclass(frozen=True)
class RecordBatch:
    """Decoded request records: numpy views over the message's bytes (read-only)."""

    protocol: str
    models: tuple[str, ...]
    scenarios: tuple[str, ...]
    columns: dict[str, np.ndarray]
    target: str = ""  # the server the records went to, in a fleet; "" with one server

    def __len__(self) -> int:
        return len(self.columns["start_ns"])


def decode_batch(message: Message) -> RecordBatch:
    body = message.body
    count = body["count"]
    columns = {}
    for name, dtype in COLUMNS.items():
        column = np.frombuffer(body["columns"][name], dtype=dtype)
        if len(column) != count:
            raise ValueError(f"batch {message.seq} from {message.sender}: column {name} has {len(column)} rows, "
                             f"not {count}")
        columns[name] = column
    return RecordBatch(body["protocol"], tuple(body["models"]), tuple(body["scenarios"]), columns,
                       body.get("target", ""))


@dataclass(frozen=True)
class Heartbeat:
    """Sent every second by each worker: enough to tell a stalled server from a dead worker."""

    time_ns: int
    in_flight: int
    oldest_in_flight_ns: int  # start time of the oldest request still in flight, 0 when none
    # Open sequences: correlation id -> (model code, last progress time_ns, step).
    open_sequences: dict[int | str, tuple[int, int, int]]
    records_sent: int
    records_dropped: int
    # Cumulative per scenario: (plans run, plans failed, requests sent). Cumulative, so a lost
    # heartbeat loses nothing: the next one carries the totals.
    plans: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    # Open loop: how late the scheduler started plans (max since the last heartbeat) and how many
    # it skipped because `max_outstanding` plans were still in flight.
    schedule_lateness_ns: int = 0
    schedule_skipped: int = 0
    # Per model code: start time of its oldest request in flight that is not a sequence's START
    # (a stateless request, or a step of a sequence that holds a slot), so a stall names its model.
    oldest_by_model: dict[int, int] = field(default_factory=dict)
    # Per model code: its requests in flight (STARTs included).
    in_flight_by_model: dict[int, int] = field(default_factory=dict)
    # Per model code: its sequence STARTs in flight, which may wait in the server's backlog for a
    # slot: (how many, start time of the oldest).
    starts_by_model: dict[int, tuple[int, int]] = field(default_factory=dict)
    # The name table that the model codes above (and in open_sequences) index.
    models: tuple[str, ...] = ()
    # The worker's own health: its CPU seconds so far, and how late its event loop woke at most
    # since the last heartbeat (a saturated load generator measures its own queueing).
    cpu_s: float = 0.0
    loop_lag_ns: int = 0
    # How its answers were checked ([workers] validate), cumulative: (compared, passed on sampled
    # pages alone, not compared at all). Under "all" the last two stay 0.
    answers: tuple[int, int, int] = (0, 0, 0)

    def to_body(self) -> dict[str, Any]:
        """The message body: msgpack map keys as text, tuples as lists."""
        return {
            "time_ns": self.time_ns,
            "in_flight": self.in_flight,
            "oldest_in_flight_ns": self.oldest_in_flight_ns,
            "open_sequences": {str(k): list(v) for k, v in self.open_sequences.items()},
            "records_sent": self.records_sent,
            "records_dropped": self.records_dropped,
            "plans": {k: list(v) for k, v in self.plans.items()},
            "schedule_lateness_ns": self.schedule_lateness_ns,
            "schedule_skipped": self.schedule_skipped,
            "oldest_by_model": {str(k): v for k, v in self.oldest_by_model.items()},
            "in_flight_by_model": {str(k): v for k, v in self.in_flight_by_model.items()},
            "starts_by_model": {str(k): list(v) for k, v in self.starts_by_model.items()},
            "models": list(self.models),
            "cpu_s": self.cpu_s,
            "loop_lag_ns": self.loop_lag_ns,
            "answers": list(self.answers),
        }

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Heartbeat:
        """A received body, decoded once (model codes back to ints; a correlation id stays the
        text it was sent as). A field the sender left out takes its default; one without a
        per-model count of requests in flight gets its total for each model it has in flight.
        KeyError, TypeError or ValueError for a body that is not a heartbeat."""
        oldest = {int(k): int(v) for k, v in body.get("oldest_by_model", {}).items()}
        in_flight = int(body.get("in_flight", 0))
        by_model = body.get("in_flight_by_model")
        return cls(
            time_ns=int(body.get("time_ns", 0)),
            in_flight=in_flight,
            oldest_in_flight_ns=int(body.get("oldest_in_flight_ns", 0)),
            open_sequences={k: (int(c), int(t), int(s)) for k, (c, t, s) in body.get("open_sequences", {}).items()},
            records_sent=int(body.get("records_sent", 0)),
            records_dropped=int(body.get("records_dropped", 0)),
            plans={k: (int(r), int(f), int(q)) for k, (r, f, q) in body.get("plans", {}).items()},
            schedule_lateness_ns=int(body.get("schedule_lateness_ns", 0)),
            schedule_skipped=int(body.get("schedule_skipped", 0)),
            oldest_by_model=oldest,
            in_flight_by_model=({int(k): int(v) for k, v in by_model.items()} if by_model is not None
                                else dict.fromkeys(oldest, in_flight)),
            starts_by_model={int(k): (int(n), int(t)) for k, (n, t) in body.get("starts_by_model", {}).items()},
            models=tuple(body.get("models", ())),
            cpu_s=float(body.get("cpu_s", 0.0)),
            loop_lag_ns=int(body.get("loop_lag_ns", 0)),
            answers=tuple(int(n) for n in body.get("answers", (0, 0, 0)))[:3],  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class Event:
    """Something that happened, said by a worker, a monitor or the coordinator: a failed plan, an
    incident, the load stopping. `count` events of the same kind when the text was left out."""

    what: str
    model: str = ""
    scenario: str = ""
    text: str = ""
    count: int = 1
    time_ns: int = 0  # the sender's monotonic clock; 0: when it arrived

    def to_body(self) -> dict[str, Any]:
        return {"what": self.what, "model": self.model, "scenario": self.scenario, "text": self.text,
                "count": self.count, "time_ns": self.time_ns}

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Event:
        return cls(str(body.get("what", "")), str(body.get("model", "")), str(body.get("scenario", "")),
                   str(body.get("text", "")), int(body.get("count", 1)), int(body.get("time_ns", 0)))


@dataclass(frozen=True)
class ResourceSample:
    """A monitor's sample: every series' value at one moment (names from engine.series_names)."""

    time_ns: int
    samples: dict[str, float]

    def to_body(self) -> dict[str, Any]:
        return {"time_ns": self.time_ns, "samples": self.samples}

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ResourceSample:
        samples = body.get("samples", {})
        if not isinstance(samples, dict):
            raise TypeError(f"resource samples are a {type(samples).__name__}, not a map")
        return cls(int(body.get("time_ns", 0)), samples)


class RecordBuffer:
    """Preallocated rows that a worker appends one request to at a time, then flushes as columns.

    `add` is on the hot path: one struct.pack_into into a preallocated buffer (seven numpy item
    stores cost about three times as much, and each one more under a cold cache); the rows turn
    into the wire's columns once per flush (`take_body`).
    """

    def __init__(self, models: tuple[str, ...], scenarios: tuple[str, ...], protocol: str, capacity: int = 512,
                 target: str = ""):
        self.models = models
        self.target = target
        self.scenarios = scenarios
        self.protocol = protocol
        self.capacity = capacity
        self._rows = bytearray(_ROW.size * capacity)
        self._pack_into = _ROW.pack_into
        self.count = 0

    def add(self, start_ns: int, latency_ns: int, model: int, scenario: int, status: int,
            sequence_id: int = 0, step: int = -1) -> bool:
        """Append one record; True when the buffer is now full and must be flushed."""
        i = self.count
        self._pack_into(self._rows, i * _ROW_BYTES, start_ns, latency_ns, model, scenario, status, sequence_id, step)
        self.count = i + 1
        return self.count == self.capacity

    def take_body(self) -> dict[str, Any]:
        """The batch body of what was added since the last take, and an empty buffer."""
        n = self.count
        rows = np.frombuffer(self._rows, dtype=_ROW_DTYPE, count=n)
        body = {
            "protocol": self.protocol,
            "models": list(self.models),
            "scenarios": list(self.scenarios),
            "count": n,
            **({"target": self.target} if self.target else {}),
            "columns": {name: rows[name].tobytes() for name in COLUMNS},
        }
        self.count = 0
        return body


# One record as RecordBuffer packs it: COLUMNS side by side, no padding (little-endian struct codes
# of the same sizes and signs as the columns' dtypes).
_STRUCT_CODES = {"i8": "q", "u8": "Q", "i4": "i", "u2": "H", "u1": "B"}
_ROW = struct.Struct("<" + "".join(_STRUCT_CODES[f"{dtype.kind}{dtype.itemsize}"] for dtype in COLUMNS.values()))
_ROW_BYTES = _ROW.size
_ROW_DTYPE = np.dtype([(name, dtype) for name, dtype in COLUMNS.items()])
assert _ROW_DTYPE.itemsize == _ROW_BYTES, "a record's struct and its columns disagree"


def now_ns() -> int:
    return time.monotonic_ns()
