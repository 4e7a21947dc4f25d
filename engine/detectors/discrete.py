"""Leaks of countable resources: open fds, threads, /dev/shm files and bytes (DETECTION.md §3,
discrete resources, "without quiesce: trend of the floors").

A leaked fd or thread never comes back, so the *floor* of the count (its minimum over a bin)
rises and keeps rising, while healthy churn (connections, worker threads) moves the count above
a steady floor. A verdict needs the floor to have risen in at least 4 of the last 5 steps between
bins (a pool that grows once and stays is a step, not a leak) and by at least the gate in total
since warm-up, in several bins in a row. Persistence counts bins, not evaluations: the aggregator
evaluates every second, and "3 evaluations in a row" would be 3 seconds of the same bins (a pool
that grew for four minutes and then stayed flat for an hour was called a leak that way).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .bins import FloorBins
from .verdict import Verdict


@dataclass(frozen=True)
class DiscreteParams:
    bin_s: float = 60.0  # floors are minima over bins this wide
    warmup_s: float = 600.0
    min_rise: float = 8.0  # in the resource's own unit (fds, threads, files, bytes)
    min_fraction: float = 0.02  # ...or this share of the first floor, if larger
    steps: int = 5  # of the last `steps` bin-to-bin steps...
    rising_steps: int = 4  # ...at least this many must rise
    persistence: int = 3  # closed bins in a row that must each show the rise


# Gates per resource: what one leaked unit is worth noticing at.
RISE_GATES = {"fds": 8.0, "threads": 4.0, "files": 1.0, "bytes": float(1 << 20)}


@dataclass
class DiscreteLeakDetector:
    """Fed samples as they arrive (`add`), judged with `evaluate`. It keeps per bin only the floor,
    and of the floors only the first after warm-up and the last few: its state does not grow."""

    subject: str
    unit: str
    params: DiscreteParams = DiscreteParams()
    started_s: float = 0.0  # run second its process started: warm-up counts from there
    _hits: int = 0
    open: bool = False
    raised: list[Verdict] = field(default_factory=list)
    _bins: FloorBins | None = None
    _judged: int = 0  # closed bins at the last judgement: each bin is judged once

    def add(self, t: float, value: float) -> None:
        p = self.params
        if t < self.started_s + p.warmup_s:
            return
        if self._bins is None:
            self._bins = FloorBins(p.bin_s, keep=p.steps + 1)
        self._bins.add(t, value)

    def evaluate(self, now: float) -> list[Verdict]:
        p = self.params
        if self._bins is None or self._bins.closed < p.steps + 1:  # the bin still filling is left out
            return []
        if self._bins.closed == self._judged:
            return []  # no bin closed since the last judgement: nothing new to persist over
        self._judged = self._bins.closed
        starts, floors = self._bins.arrays()
        rises = int(np.sum(np.diff(floors[-(p.steps + 1):]) > 0))
        total = float(floors[-1] - floors[0])
        gate = max(p.min_rise, p.min_fraction * floors[0])
        leaking = rises >= p.rising_steps and total >= gate
        self._hits = self._hits + 1 if leaking else 0
        if self.open or self._hits < p.persistence:
            return []
        self.open = True
        hours = max((starts[-1] - starts[0]) / 3600.0, 1e-9)
        verdict = Verdict("leak", "LEAK", self.subject, float(starts[0]), now, total / hours, f"{self.unit}/h",
                          total / hours, total / hours,
                          {"floor_first": float(floors[0]), "floor_last": float(floors[-1]), "rise": total,
                           "gate": gate, "rising_steps": float(rises), "bin_s": p.bin_s})
        self.raised.append(verdict)
        return [verdict]
