"""When a point's measurement can stop: perf_analyzer's rule. The last `count` windows agree when,
for throughput and for p99 latency each, the largest is within `tolerance` of the smallest
(max <= min x (1 + tolerance)). A window with no answered request never agrees with anything."""

from __future__ import annotations

from collections.abc import Sequence


def spread(values: Sequence[float]) -> float:
    """max / min - 1 of the values (inf when one is zero or there are none): 0.07 = within 7 %."""
    if not values or min(values) <= 0:
        return float("inf")
    return max(values) / min(values) - 1.0


def is_stable(throughputs: Sequence[float], p99s: Sequence[float], count: int, tolerance: float) -> bool:
    """Whether the last `count` windows agree on throughput and on p99 within `tolerance`."""
    if count < 1 or len(throughputs) < count or len(p99s) < count:
        return False
    limit = tolerance + 1e-9  # 110 vs 100 at 10 % is within, whatever the float rounding says
    return spread(throughputs[-count:]) <= limit and spread(p99s[-count:]) <= limit
