"""A mergeable latency histogram with log-spaced buckets (HdrHistogram's idea, in numpy).

Bucket ``i`` holds ``[LOW_NS * GROWTH**i, LOW_NS * GROWTH**(i + 1))``: buckets grow by 1 % from
1 us to a bit over 1 h, and a percentile is the geometric middle of its bucket, so it is within
0.5 % of the exact value. Values outside the range are clamped into the first or last bucket (they
still count; only their percentile is off). Count, sum (so the mean) and maximum are kept exactly
beside the buckets. Histograms merge by adding counts, which is how whole-run percentiles come
from per-window ones."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

LOW_NS = 1_000.0  # 1 us: the lower edge of bucket 0
GROWTH = 1.01  # each bucket is 1 % wider than the one before
_LOG_GROWTH = math.log(GROWTH)
# Enough buckets that 1 h (and 5 % beyond, for slack) has a bucket of its own: 1523.
BUCKETS = math.ceil(math.log(3_600e9 * 1.05 / LOW_NS) / _LOG_GROWTH) + 1

# Stored form (to_bytes): header, then the non-empty buckets' indices (<u2) and their counts, the
# counts in the narrowest unsigned width that holds the largest one (a 10 s window rarely needs
# more than one byte a bucket, and the store keeps one histogram per window for days).
_VERSION = 2
# version, count width (bytes), buckets stored, count, max ns, sum ns (16 bytes: a merged whole-run
# sum must not overflow, however long the run)
_HEADER = struct.Struct("<BBIqq16s")
_HEADER_V1 = struct.Struct("<BIdqq")  # version 1: version, buckets stored, sum ns (float), max ns, count
_WIDTHS = {1: "<u1", 2: "<u2", 4: "<u4", 8: "<i8"}


def bucket_of(values_ns: np.ndarray) -> np.ndarray:
    """Bucket index (int64) of each value, clamped into ``0 .. BUCKETS - 1``."""
    scaled = np.maximum(np.asarray(values_ns, dtype=np.float64), LOW_NS)
    scaled /= LOW_NS
    index = np.log(scaled)
    index /= _LOG_GROWTH
    return np.minimum(index.astype(np.int64), BUCKETS - 1)  # astype truncates: floor, as all >= 0


_MIDDLE_NS = LOW_NS * GROWTH ** (np.arange(BUCKETS) + 0.5)  # what a percentile in each bucket reads


class LatencyHistogram:
    """Counts of latencies (ns) per log bucket, plus their exact count, sum and maximum."""

    __slots__ = ("count", "counts", "max_ns", "sum_ns")

    def __init__(self) -> None:
        self.counts = np.zeros(BUCKETS, dtype=np.int64)
        self.count = 0
        self.sum_ns = 0  # a Python int: exact however long the run
        self.max_ns = 0

    def add(self, values_ns: np.ndarray) -> None:
        """Add latencies (ns), a whole array at once."""
        values = np.asarray(values_ns)
        if len(values) == 0:
            return
        self.counts += np.bincount(bucket_of(values), minlength=BUCKETS)
        self.count += len(values)
        self.sum_ns += int(np.sum(values, dtype=np.int64))
        self.max_ns = max(self.max_ns, int(np.max(values)))

    def merge(self, other: LatencyHistogram) -> None:
        """Add everything `other` holds (it is left as it was)."""
        self.counts += other.counts
        self.count += other.count
        self.sum_ns += other.sum_ns
        self.max_ns = max(self.max_ns, other.max_ns)

    @property
    def mean_ns(self) -> float:
        return self.sum_ns / self.count if self.count else 0.0

    def percentile(self, q: float) -> float:
        """The q-th percentile (q in 0..100) in ns; 0.0 when empty; the exact maximum at 100."""
        return self.percentiles((q,))[0]

    def percentiles(self, qs: Sequence[float]) -> list[float]:
        """Several percentiles at the cost of one (one cumulative sum over the buckets)."""
        if any(not 0.0 <= q <= 100.0 for q in qs):
            raise ValueError(f"percentiles must be within 0..100, got {list(qs)}")
        if self.count == 0:
            return [0.0] * len(qs)
        # Rank of the q-th percentile, as numpy's "inverted_cdf": the smallest value with at
        # least q % of the values at or below it. The small nudge keeps float noise such as
        # 99.9 / 100 * 1000 = 999.0000000000001 from moving it one rank up.
        ranks = [max(1, math.ceil(q / 100.0 * self.count - 1e-9)) for q in qs]
        index = np.searchsorted(np.cumsum(self.counts), ranks)
        # Never above the maximum seen (the top bucket's middle can be past it), and the top rank
        # is the maximum itself, exactly.
        values = np.minimum(_MIDDLE_NS[index], float(self.max_ns))
        return [float(self.max_ns) if r >= self.count else float(v) for r, v in zip(ranks, values.tolist())]

    def to_bytes(self) -> bytes:
        """Sparse stored form: only the non-empty buckets. `from_bytes` gives back an equal one."""
        nonzero = np.flatnonzero(self.counts)
        counts = self.counts[nonzero]
        top = int(counts.max()) if len(counts) else 0
        width = next(w for w in (1, 2, 4, 8) if w == 8 or top < 1 << (8 * w))
        header = _HEADER.pack(_VERSION, width, len(nonzero), self.count, self.max_ns,
                              self.sum_ns.to_bytes(16, "little", signed=True))
        return header + nonzero.astype("<u2").tobytes() + counts.astype(_WIDTHS[width]).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> LatencyHistogram:
        """The histogram `to_bytes` stored; empty bytes read as an empty histogram."""
        out = cls()
        if not data:
            return out
        version = data[0]
        if len(data) < {_VERSION: _HEADER.size, 1: _HEADER_V1.size}.get(version, 0):
            raise ValueError(f"latency histogram of {len(data)} bytes is shorter than its header")
        if version == _VERSION:
            _, width, n, out.count, out.max_ns, sum_ns = _HEADER.unpack_from(data)
            out.sum_ns = int.from_bytes(sum_ns, "little", signed=True)
            offset, dtype = _HEADER.size, _WIDTHS.get(width)
        elif version == 1:  # stores written before the count width was variable
            _, n, sum_ns, out.max_ns, out.count = _HEADER_V1.unpack_from(data)
            out.sum_ns, offset, width, dtype = round(sum_ns), _HEADER_V1.size, 8, "<i8"
        else:
            raise ValueError(f"latency histogram format {version}; this engine reads 1 and {_VERSION}")
        if dtype is None or len(data) != offset + n * (2 + width):
            raise ValueError(f"latency histogram of {len(data)} bytes does not match its header")
        index = np.frombuffer(data, "<u2", n, offset)
        if n and int(index.max()) >= BUCKETS:
            raise ValueError(f"latency histogram bucket {int(index.max())} beyond the {BUCKETS} this engine has")
        out.counts[index] = np.frombuffer(data, dtype, n, offset + 2 * n)
        return out

    def clear(self) -> None:
        self.counts[:] = 0
        self.count = self.sum_ns = self.max_ns = 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencyHistogram):
            return NotImplemented
        return (self.count, self.sum_ns, self.max_ns) == (other.count, other.sum_ns, other.max_ns) \
            and bool(np.array_equal(self.counts, other.counts))

    def __repr__(self) -> str:
        return (f"LatencyHistogram(count={self.count}, mean_ns={self.mean_ns:.0f}, "
                f"p50_ns={self.percentile(50):.0f}, max_ns={self.max_ns})")
