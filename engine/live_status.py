"""The aggregator's live figures: written into the store with every tick, read by the coordinator
(heartbeat ages, fatal verdicts), the live view, the Prometheus endpoint, the report and a
restarted aggregator. One typed value, decoded once where it is read."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class LiveStatus:
    time_s: float = 0.0  # seconds since the load started, at the tick that wrote this
    requests: int = 0  # request records received
    rate: float = 0.0  # requests per second over the last ten ticks
    p99_ms: float = 0.0  # worst p99 of the windows that closed last
    p99_recent_ms: float = 0.0  # worst p99 of the last few windows
    errors: int = 0  # failed requests
    wrong: int = 0  # answers that failed validation
    verdicts: list[str] = field(default_factory=list)  # every verdict in force, described (PLATEAU left out)
    fatal: list[str] = field(default_factory=list)  # those of a detector listed as fatal: the run stops
    lost_messages: int = 0  # telemetry messages that never arrived (sequence gaps)
    bad_messages: int = 0  # telemetry messages that could not be read
    late_records: int = 0  # records that arrived after their window closed
    client_bound_windows: int = 0  # windows not judged for drift: a worker was its own bottleneck
    heartbeat_age_s: dict[str, float] = field(default_factory=dict)  # worker -> seconds since its last heartbeat
    # What a restarted aggregator needs to go on counting: sender -> [next message sequence,
    # its plan totals per scenario as [run, failed, requests], its answer counts as below].
    senders: dict[str, list[Any]] = field(default_factory=dict)
    # How the workers checked answers ([workers] validate): [compared, passed on sampled pages
    # alone, not compared at all]; under "all" the last two are 0.
    answers: list[int] = field(default_factory=lambda: [0, 0, 0])
    final: bool = False  # written by the last tick: a store without it did not end normally

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> LiveStatus:
        """Keys this version does not know are left out, missing ones take their defaults: a store
        written by an older or newer engine still reads."""
        raw = orjson.loads(data)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in raw.items() if key in known})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
