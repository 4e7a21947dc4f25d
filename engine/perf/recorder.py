"""The hot path's bookkeeping: each answered request appends its latency to the current window's
list and adds its client times to two sums. Nothing else happens per request; a window is turned
into a histogram and figures once, when it closes (one numpy call for all its requests)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..aggregator.histogram import LatencyHistogram

ERROR_SAMPLES = 5  # distinct error texts kept per point


class Accumulator:
    """What one phase or window collected (mutable; lives on the event loop only)."""

    __slots__ = ("errors", "latencies", "lateness_max_ns", "lateness_ns", "recv_ns", "send_ns", "skipped")

    def __init__(self) -> None:
        self.latencies: list[int] = []
        self.errors = 0
        self.send_ns = 0
        self.recv_ns = 0
        self.lateness_ns = 0  # open loop: sum of (actual send - intended send)
        self.lateness_max_ns = 0
        self.skipped = 0  # open loop: scheduled requests no lane was free for

    @property
    def ok(self) -> int:
        return len(self.latencies)


class Recorder:
    """Answers land in `current`; `swap()` closes it and opens the next one."""

    def __init__(self) -> None:
        self.current = Accumulator()
        self.error_samples: dict[str, int] = {}

    def ok(self, latency_ns: int, send_ns: int, recv_ns: int) -> None:
        current = self.current
        current.latencies.append(latency_ns)
        current.send_ns += send_ns
        current.recv_ns += recv_ns

    def error(self, text: str) -> None:
        self.current.errors += 1
        if text in self.error_samples:
            self.error_samples[text] += 1
        elif len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples[text] = 1

    def late(self, lateness_ns: int) -> None:
        current = self.current
        current.lateness_ns += lateness_ns
        current.lateness_max_ns = max(current.lateness_max_ns, lateness_ns)

    def skip(self) -> None:
        self.current.skipped += 1

    def swap(self) -> Accumulator:
        done, self.current = self.current, Accumulator()
        return done


@dataclass(frozen=True)
class Window:
    """A closed measurement window, summarized; `histogram` merges into a point's figures."""

    duration_s: float
    requests: int  # answered successfully
    errors: int
    batch_size: int
    histogram: LatencyHistogram
    send_ns: int
    recv_ns: int
    lateness_ns: int
    lateness_max_ns: int
    skipped: int

    @property
    def throughput(self) -> float:
        """Inferences per second (a request of batch B counts B, as perf_analyzer counts)."""
        return self.requests * self.batch_size / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def p99_us(self) -> float:
        return self.histogram.percentile(99) / 1000.0


def close_window(accumulator: Accumulator, duration_s: float, batch_size: int) -> Window:
    histogram = LatencyHistogram()
    histogram.add(np.asarray(accumulator.latencies, dtype=np.int64))
    return Window(duration_s, accumulator.ok, accumulator.errors, batch_size, histogram, accumulator.send_ns,
                  accumulator.recv_ns, accumulator.lateness_ns, accumulator.lateness_max_ns, accumulator.skipped)


def merge_windows(windows: list[Window]) -> Window:
    """The reported measurement: the last windows taken together."""
    histogram = LatencyHistogram()
    for window in windows:
        histogram.merge(window.histogram)
    return Window(
        duration_s=sum(w.duration_s for w in windows), requests=sum(w.requests for w in windows),
        errors=sum(w.errors for w in windows), batch_size=windows[0].batch_size if windows else 1,
        histogram=histogram, send_ns=sum(w.send_ns for w in windows), recv_ns=sum(w.recv_ns for w in windows),
        lateness_ns=sum(w.lateness_ns for w in windows),
        lateness_max_ns=max((w.lateness_max_ns for w in windows), default=0),
        skipped=sum(w.skipped for w in windows),
    )
