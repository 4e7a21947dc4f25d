"""A mergeable latency histogram with log-spaced buckets (HdrHistogram's idea, in numpy).

Buckets grow by 1 % from 1 us to a bit over 1 h, so any percentile is within 0.5 % of the exact
value (the bucket's geometric middle is returned); a window's histogram merges into a whole-run
one by adding counts. Values outside the range are clamped into the first or last bucket."""

from __future__ import annotations

import struct

import numpy as np

LOW_NS = 1_000.0  # 1 us
GROWTH = 1.01
BUCKETS = int(np.ceil(np.log(3_600e9 * 1.05 / LOW_NS) / np.log(GROWTH))) + 1
_LOG_GROWTH = np.log(GROWTH)
_HEADER = struct.Struct("<BIdqq")  # version, non-empty buckets, sum ns, max ns, count
_VERSION = 1


def bucket_of(values_ns: np.ndarray) -> np.ndarray:
    scaled = np.maximum(np.asarray(values_ns, dtype=np.float64), LOW_NS) / LOW_NS
    return np.minimum((np.log(scaled) / _LOG_GROWTH).astype(np.int64), BUCKETS - 1)


class LatencyHistogram:
    __slots__ = ("count", "counts", "max_ns", "sum_ns")

    def __init__(self) -> None:
        self.counts = np.zeros(BUCKETS, dtype=np.int64)
        self.count = 0
        self.max_ns = 0
        self.sum_ns = 0.0

    def add(self, values_ns: np.ndarray) -> None:
        if len(values_ns) == 0:
            return
        self.add_buckets(bucket_of(values_ns), int(np.max(values_ns)), float(np.sum(values_ns, dtype=np.float64)),
                         len(values_ns))

    def add_buckets(self, buckets: np.ndarray, max_ns: int, sum_ns: float, count: int) -> None:
        """Bucket indices already computed (the window folder buckets a whole batch at once)."""
        self.counts += np.bincount(buckets, minlength=BUCKETS)
        self.count += count
        self.max_ns = max(self.max_ns, max_ns)
        self.sum_ns += sum_ns

    def merge(self, other: LatencyHistogram) -> None:
        self.counts += other.counts
        self.count += other.count
        self.max_ns = max(self.max_ns, other.max_ns)
        self.sum_ns += other.sum_ns

    @property
    def mean_ns(self) -> float:
        return self.sum_ns / self.count if self.count else 0.0

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) in ns; 0.0 when empty. Exact at 100 (the maximum)."""
        if self.count == 0:
            return 0.0
        if q >= 100:
            return float(self.max_ns)
        rank = max(1, int(np.ceil(q / 100.0 * self.count)))
        index = int(np.searchsorted(np.cumsum(self.counts), rank))
        middle = LOW_NS * GROWTH ** (index + 0.5)
        return float(min(middle, self.max_ns))

    def to_bytes(self) -> bytes:
        nonzero = np.flatnonzero(self.counts)
        header = _HEADER.pack(_VERSION, len(nonzero), self.sum_ns, self.max_ns, self.count)
        return header + nonzero.astype("<u2").tobytes() + self.counts[nonzero].astype("<i8").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> LatencyHistogram:
        version, n, sum_ns, max_ns, count = _HEADER.unpack_from(data)
        if version != _VERSION:
            raise ValueError(f"latency histogram format {version}, this engine reads {_VERSION}")
        offset = _HEADER.size
        index = np.frombuffer(data, "<u2", n, offset)
        values = np.frombuffer(data, "<i8", n, offset + 2 * n)
        out = cls()
        out.counts[index] = values
        out.count, out.max_ns, out.sum_ns = count, max_ns, sum_ns
        return out

    def clear(self) -> None:
        self.counts[:] = 0
        self.count = self.max_ns = 0
        self.sum_ns = 0.0
