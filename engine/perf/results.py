"""What a point's measurement says, as values: the figures perf_analyzer reports, the request
accounting that ties the client's counts to the server's, and each window's own figures."""

from __future__ import annotations

from dataclasses import dataclass, field

from .plan import PointSpec
from .recorder import Window
from .server_stats import ServerSplit
from .stability import spread

STABLE, UNSTABLE, SKIPPED, FAILED, NOT_RUN = "stable", "unstable", "skipped", "failed", "not_run"
MEASURED = (STABLE, UNSTABLE)
PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class Latency:
    """Client-side latency of the answered requests, in microseconds."""

    avg_us: float
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    max_us: float


@dataclass(frozen=True)
class RequestCounts:
    """Where every request of a point went. `answered` is what the server's success count must
    have grown by over the point (the check, warm-up, every window and the drain)."""

    check: int = 0  # one validated request per lane, before the warm-up
    warmup: int = 0  # answered during the warm-up (not counted)
    measured: int = 0  # answered in any window
    counted: int = 0  # answered in the reported windows (the figures come from these)
    drained: int = 0  # answered after the last window, while in-flight requests finished
    errors: int = 0  # errors in the reported windows
    errors_total: int = 0  # errors in every phase
    skipped: int = 0  # open loop: scheduled requests that found no idle lane (never sent)
    # The server's own success count over the whole point (statistics read before the check and
    # after the drain); equals `answered` when nothing else uses the model. -1: not read.
    server_success: int = -1

    @property
    def answered(self) -> int:
        return self.check + self.warmup + self.measured + self.drained


@dataclass(frozen=True)
class WindowFigures:
    duration_s: float
    requests: int
    errors: int
    throughput: float  # inferences per second
    avg_us: float
    p50_us: float
    p99_us: float


@dataclass(frozen=True)
class PointResult:
    spec: PointSpec
    status: str  # STABLE, UNSTABLE, SKIPPED, FAILED, NOT_RUN
    reason: str = ""  # why skipped, failed, not run, or what made it unstable
    throughput: float = 0.0  # inferences per second over the reported windows
    request_rate: float = 0.0  # answered requests per second over the reported windows
    latency: Latency | None = None
    client_send_us: float = 0.0  # per answered request
    client_recv_us: float = 0.0
    server: ServerSplit | None = None  # over the reported windows
    counts: RequestCounts = field(default_factory=RequestCounts)
    windows: tuple[WindowFigures, ...] = ()
    reported_windows: int = 0  # the last this-many windows give the figures
    throughput_spread: float = 0.0  # max/min - 1 over the reported windows
    p99_spread: float = 0.0
    lateness_avg_us: float = 0.0  # open loop: how late requests left against their schedule
    lateness_max_us: float = 0.0
    error_samples: tuple[tuple[str, int], ...] = ()  # (text, occurrences), first few distinct texts
    elapsed_s: float = 0.0
    # CPU time of the client process per answered request over the reported windows: near the
    # server's own cost per request, the client was (part of) the bottleneck.
    client_cpu_us: float = 0.0

    @property
    def measured(self) -> bool:
        return self.status in MEASURED

    @property
    def network_server_us(self) -> float:
        """perf_analyzer's "Network+Server Send/Recv": the average latency the client's own work
        and the server's reported stages do not explain (transport, HTTP/gRPC handling)."""
        if self.latency is None:
            return 0.0
        server = self.server.total_us if self.server else 0.0
        return max(0.0, self.latency.avg_us - self.client_send_us - self.client_recv_us - server)


def window_figures(window: Window) -> WindowFigures:
    hist = window.histogram
    p50, p99 = hist.percentiles((50, 99))
    return WindowFigures(window.duration_s, window.requests, window.errors, window.throughput,
                         hist.mean_ns / 1000.0, p50 / 1000.0, p99 / 1000.0)


def measured_result(spec: PointSpec, stable: bool, reason: str, windows: list[Window], reported: Window,
                    reported_count: int, server: ServerSplit | None, counts: RequestCounts,
                    error_samples: dict[str, int], elapsed_s: float, client_cpu_us: float = 0.0) -> PointResult:
    """The figures of a measured point from its windows and the merged reported ones."""
    hist = reported.histogram
    p50, p90, p95, p99 = (v / 1000.0 for v in hist.percentiles(PERCENTILES))
    latency = Latency(hist.mean_ns / 1000.0, p50, p90, p95, p99, hist.max_ns / 1000.0)
    answered = max(reported.requests, 1)
    scheduled = reported.requests + reported.errors  # open loop: requests that left, late or not
    last = windows[-reported_count:]
    return PointResult(
        spec=spec, status=STABLE if stable else UNSTABLE, reason=reason, throughput=reported.throughput,
        request_rate=reported.requests / reported.duration_s if reported.duration_s > 0 else 0.0,
        latency=latency, client_send_us=reported.send_ns / answered / 1000.0,
        client_recv_us=reported.recv_ns / answered / 1000.0, server=server, counts=counts,
        windows=tuple(window_figures(w) for w in windows), reported_windows=reported_count,
        throughput_spread=spread([w.throughput for w in last]), p99_spread=spread([w.p99_us for w in last]),
        lateness_avg_us=reported.lateness_ns / max(scheduled, 1) / 1000.0,
        lateness_max_us=reported.lateness_max_ns / 1000.0,
        error_samples=tuple(error_samples.items()), elapsed_s=elapsed_s, client_cpu_us=client_cpu_us,
    )
