"""Resource samples reduced to bins as they arrive, so a detector's state stays bounded over a
6.5-day run: what it keeps grows with the number of bins (one per minute in the long profile),
never with the number of samples, and each evaluation reads the bins instead of re-binning the
whole history.

Bins are laid out from the first sample a detector keeps (its first sample after warm-up), in
steps of `width` seconds, exactly as `trend.median_bins` lays them out over the whole series.
"""

from __future__ import annotations

import bisect
import collections
import math
from array import array

import numpy as np


class MedianBins:
    """Medians of (t, value, completed requests) per bin: what the leak detector fits its trends
    on, and each bin's minimum (its floor: what periodic frees do not take back). Completed bins
    are kept as 8-byte doubles; the samples of the bin still filling are held until it closes (a
    bin's median needs all of them)."""

    def __init__(self, width: float) -> None:
        self.width = width
        self.first_t = self.last_t = math.nan  # times of the first and latest samples
        self._key = -1  # bin index of the samples held in _open
        self._open: tuple[list[float], list[float], list[float]] = ([], [], [])
        self._t, self._v, self._requests = array("d"), array("d"), array("d")
        self._floor = array("d")

    def add(self, t: float, value: float, requests: float) -> None:
        if not self._t and not self._open[0]:
            self.first_t = t
        self.last_t = t
        key = math.floor((t - self.first_t) / self.width)
        if key != self._key and self._open[0]:
            self._close()
        self._key = key
        for column, x in zip(self._open, (t, value, requests)):
            column.append(x)

    def _close(self) -> None:
        self._floor.append(min(self._open[1]))
        for kept, column in zip((self._t, self._v, self._requests), self._open):
            kept.append(float(np.median(column)))
            column.clear()

    def __len__(self) -> int:
        return len(self._t) + (1 if self._open[0] else 0)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(t, value, requests) medians of every bin, the one still filling last."""
        columns = []
        for kept, column in zip((self._t, self._v, self._requests), self._open):
            # A copy: a view would pin the array's buffer, and the next append would fail.
            closed = np.frombuffer(kept, dtype=np.float64).copy() if len(kept) else np.empty(0)
            columns.append(np.append(closed, np.median(column)) if column else closed)
        return columns[0], columns[1], columns[2]


    def drop_before(self, t: float) -> None:
        """Forget the closed bins whose median time is before `t` (what no fit will read again).
        The origin of the bins stays, so later bins keep their boundaries."""
        cut = bisect.bisect_left(self._t, t)
        if cut:
            for kept in (self._t, self._v, self._requests, self._floor):
                del kept[:cut]

    def floors(self) -> np.ndarray:
        """The minimum of every bin, in the order of `arrays()`."""
        closed = np.frombuffer(self._floor, dtype=np.float64).copy() if len(self._floor) else np.empty(0)
        return np.append(closed, min(self._open[1])) if self._open[1] else closed


class FloorBins:
    """The minimum (floor) of each bin and the time of its first sample, for the bins that have
    closed. A floor detector reads the first floor and the last few only, so the ones between are
    not kept: `keep` is how many of the latest closed bins stay."""

    def __init__(self, width: float, keep: int) -> None:
        self.width = width
        self.closed = 0  # bins closed so far, kept or not
        self._origin: float | None = None
        self._key = -1
        self._start = 0.0
        self._floor = math.inf
        self._first: tuple[float, float] | None = None
        self._recent: collections.deque[tuple[float, float]] = collections.deque(maxlen=keep)

    def add(self, t: float, value: float) -> None:
        if self._origin is None:
            self._origin = t
        key = math.floor((t - self._origin) / self.width)
        if key != self._key:
            if self._floor < math.inf:
                self._close()
            self._key, self._start, self._floor = key, t, value
        elif value < self._floor:
            self._floor = value

    def _close(self) -> None:
        closed = (self._start, self._floor)
        if self._first is None:
            self._first = closed
        self._recent.append(closed)
        self.closed += 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts, floors) of the first closed bin and the latest `keep` (without repeating the
        first while it is still among them)."""
        kept = list(self._recent)
        if self._first is not None and self.closed > len(kept):
            kept.insert(0, self._first)
        if not kept:
            return np.empty(0), np.empty(0)
        starts, floors = zip(*kept)
        return np.array(starts), np.array(floors)
