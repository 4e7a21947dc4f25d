"""The recent samples of a resource series that the stall detector reads.

What the leak detectors read is kept by the detectors themselves, in bins (engine.detectors.bins);
series no detector reads are only stored. The aggregator's memory thus stays flat over a long run.
"""

from __future__ import annotations

import bisect
from array import array

import numpy as np


class RecentSamples:
    """The samples of the last `horizon_s` seconds (at least): enough to tell how much CPU a stub
    used since its oldest request in flight started. Older samples are dropped in chunks, so an
    append costs O(1) amortized. Kept as arrays of doubles, not lists of floats: at one sample a
    second per stub, lists held a float object per sample, thousands of small blocks per stub."""

    def __init__(self, horizon_s: float) -> None:
        self.horizon_s = horizon_s
        self.t = array("d")
        self.v = array("d")

    def append(self, t: float, v: float) -> None:
        self.t.append(t)
        self.v.append(v)
        if self.t[0] < t - 2 * self.horizon_s:
            cut = bisect.bisect_left(self.t, t - self.horizon_s)
            del self.t[:cut], self.v[:cut]

    def recent(self, since_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Samples from the last one at or before `since_s` on (what a delta since then needs)."""
        first = max(0, bisect.bisect_right(self.t, since_s) - 1)
        return np.array(self.t[first:], dtype=float), np.array(self.v[first:], dtype=float)

