"""Names of the monitor's resource series, and the recent samples the stall detector reads.

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


TARGET_PREFIX = "target/"  # a fleet's monitors name their series target/<server name>/<series>


def split_target(series_name: str) -> tuple[str, str]:
    """'target/a/proc/server/fds' -> ('a', 'proc/server/fds'); a one-server name -> ('', name)."""
    if series_name.startswith(TARGET_PREFIX):
        target, _, rest = series_name[len(TARGET_PREFIX):].partition("/")
        return target, rest
    return "", series_name


def process_of(series_name: str) -> str | None:
    """'proc/stub/m_0_1/rss_anon' -> 'stub/m_0_1'; 'proc/server/fds' -> 'server';
    'target/a/proc/server/fds' -> 'server on a'; else None."""
    target, rest = split_target(series_name)
    if not rest.startswith("proc/"):
        return None
    process = rest[len("proc/"):].rsplit("/", 1)[0]
    return f"{process} on {target}" if target else process


def field_of(series_name: str) -> str:
    return series_name.rsplit("/", 1)[-1]
