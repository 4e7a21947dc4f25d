"""One closed window of one (model, scenario, protocol, target): the value the aggregator folds records
into, the store keeps, and the drift and error detectors and the reports read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WindowStats:
    start_s: float  # window start, seconds since the run's origin (monotonic clock)
    length_s: float
    model: str
    scenario: str
    protocol: str
    requests: int  # every record whose request completed in the window
    ok: int
    errors: int  # STATUS_ERROR: the server or the transport failed the request
    wrong: int  # STATUS_WRONG: answered, failed validation
    expected_errors: int  # a negative scenario got the error it must get (not an error)
    missing_errors: int  # a negative scenario did not get the error it must get
    throughput: float  # requests / length_s
    # Latency of the answered requests (ok + wrong), milliseconds; 0.0 when none was answered.
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    # The window's latency histogram (LatencyHistogram.to_bytes()), so whole-run percentiles
    # come from merging windows.
    histogram: bytes = b""
    # The server the requests went to, by name, when the run drives a fleet ("" with one server).
    target: str = ""
