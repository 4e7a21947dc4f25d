"""The server's side of a measurement: Triton's cumulative per-model statistics
(GET /v2/models/<model>/stats), read at window boundaries; a difference of two reads, divided by
the requests in between, is perf_analyzer's server split (queue, compute input/infer/output)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson

from workers.wire.http_client import HttpConnection
from workers.wire.http_message import http_get

STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


class StatsError(RuntimeError):
    """The statistics endpoint did not answer as Triton's does."""


@dataclass(frozen=True)
class StatsSnapshot:
    """Cumulative counters of one model (all versions summed) at one moment."""

    counts: dict[str, int]  # stage -> count (success/fail: requests; the others: requests timed)
    ns: dict[str, int]  # stage -> total nanoseconds
    inference_count: int = 0  # batch items inferred (a request of batch 4 counts 4)
    execution_count: int = 0  # model executions (a dynamic batch counts once)

    def minus(self, earlier: StatsSnapshot) -> StatsSnapshot:
        return StatsSnapshot(
            {k: self.counts[k] - earlier.counts[k] for k in STAGES},
            {k: self.ns[k] - earlier.ns[k] for k in STAGES},
            self.inference_count - earlier.inference_count,
            self.execution_count - earlier.execution_count,
        )


@dataclass(frozen=True)
class ServerSplit:
    """Per-request server times over a span, in microseconds (perf_analyzer's columns)."""

    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float
    success: int  # requests the server answered successfully in the span
    failed: int
    inferences: int
    executions: int

    @property
    def total_us(self) -> float:
        return self.queue_us + self.compute_input_us + self.compute_infer_us + self.compute_output_us


def parse_stats(payload: bytes, model: str) -> StatsSnapshot:
    try:
        document = orjson.loads(payload)
        entries = [e for e in document["model_stats"] if e.get("name") == model]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise StatsError(f"statistics of {model!r} are not Triton's JSON: {exc}") from None
    if not entries:
        raise StatsError(f"the server has no statistics for {model!r}")
    counts = dict.fromkeys(STAGES, 0)
    ns = dict.fromkeys(STAGES, 0)
    inferences = executions = 0
    for entry in entries:  # one per loaded version
        stats = entry.get("inference_stats", {})
        for stage in STAGES:
            counts[stage] += int(stats.get(stage, {}).get("count", 0))
            ns[stage] += int(stats.get(stage, {}).get("ns", 0))
        inferences += int(entry.get("inference_count", 0))
        executions += int(entry.get("execution_count", 0))
    return StatsSnapshot(counts, ns, inferences, executions)


def split(delta: StatsSnapshot) -> ServerSplit:
    """Each stage's time per request it timed (as perf_analyzer divides them)."""
    def per(stage: str) -> float:
        count = delta.counts[stage]
        return delta.ns[stage] / count / 1000.0 if count > 0 else 0.0

    return ServerSplit(per("queue"), per("compute_input"), per("compute_infer"), per("compute_output"),
                       delta.counts["success"], delta.counts["fail"], delta.inference_count, delta.execution_count)


class StatsReader:
    """Reads one model's statistics over a connection of its own, without blocking the event loop
    the lanes run on (one read per window boundary)."""

    def __init__(self, http_address: str, timeout: float = 10.0) -> None:
        host, _, port = http_address.rpartition(":")
        self._host, self._port, self._timeout = host, int(port), timeout
        self._connection: HttpConnection | None = None

    async def read(self, model: str) -> StatsSnapshot:
        for attempt in (1, 2):  # a keep-alive connection the server closed meanwhile: one fresh try
            try:
                if self._connection is None or self._connection.closed:
                    self._connection = await HttpConnection.open(self._host, self._port, timeout=self._timeout)
                request = http_get(f"{self._host}:{self._port}", f"/v2/models/{model}/stats")
                status = await asyncio.wait_for(self._connection.request(request), self._timeout)
                body = bytes(self._connection.body())
            except (TimeoutError, ConnectionError, OSError) as exc:
                if self._connection is not None:
                    self._connection.close()
                self._connection = None
                if attempt == 2:
                    raise StatsError(f"statistics of {model!r} from http://{self._host}:{self._port}: "
                                     f"{exc!r}") from None
                continue
            if status != 200:
                raise StatsError(f"statistics of {model!r}: HTTP {status}: {body[:300].decode(errors='replace')}")
            return parse_stats(body, model)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
