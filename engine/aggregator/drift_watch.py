"""Latency drift of every (model, scenario, protocol, target), judged as windows close.

A drift detector compares a baseline (the windows just after warm-up) with the latest windows, so
of each series only those are kept: the first warm-up + baseline windows and the latest current
ones (60 windows in the long profile, whatever the run's length). The common mode, what moved
every series at once (the host, the server), is judged on its own as the drift of "all models",
and each series net of it.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from engine.detectors.drift import DriftDetector, DriftParams
from engine.detectors.settings import DetectorSettings
from engine.detectors.verdict import Verdict

from ..window_stats import WindowStats
from .stages import StageWatch

Key = tuple[str, str, str, str]  # model, scenario, protocol, target
Point = tuple[float, float, float, int]  # window start, p50, p99, answered requests


class WindowPoints:
    """The first `head` points of a series and the latest `tail` ones; `count` of all. While the
    series has no more than head + tail points, every one is kept."""

    def __init__(self, head: int, tail: int) -> None:
        self.head: list[Point] = []
        self.tail: collections.deque[Point] = collections.deque(maxlen=tail)
        self.head_size = head
        self.count = 0

    def add(self, point: Point) -> None:
        if len(self.head) < self.head_size:
            self.head.append(point)
        else:
            self.tail.append(point)
        self.count += 1

    def columns(self) -> list[np.ndarray]:
        """[starts, p50, p99, answered] of the kept points, in order."""
        return [np.array(column) for column in zip(*self.head, *self.tail)] if self.head else []


class DriftWatch:
    def __init__(self, settings: DetectorSettings) -> None:
        self.params: DriftParams = settings.drift
        self.window_s = settings.window_s
        self.min_requests = settings.drift_min_requests
        self.detectors: dict[Key, DriftDetector] = {}
        self.points: dict[Key, WindowPoints] = {}
        self.common: DriftDetector | None = None

    def _attributed(self, verdict: Verdict, model: str, stages: StageWatch | None) -> Verdict:
        """The drift's added time per request split over the server's queue, its compute and
        what lies outside the server, from the model's stage metrics over the same spans."""
        if stages is None:
            return verdict
        e = verdict.evidence
        added_ms = e["baseline_median"] * verdict.size / 100
        share = stages.share(model, (e["baseline_from_s"], e["baseline_last_s"] + self.window_s),
                             (verdict.since_s, e["current_last_s"] + self.window_s), added_ms)
        if share is None:
            return verdict
        return dataclasses.replace(verdict, evidence={**e, "added_ms": added_ms, "added_queue_ms": share.queue_ms,
                                                      "added_compute_ms": share.compute_ms,
                                                      "added_outside_ms": share.outside_ms})

    def evaluate(self, closed: list[WindowStats], now: float, stages: StageWatch | None = None) -> list[Verdict]:
        """Each series with a fresh window against its own baseline, net of what moved all of them
        (the common mode: the median change of the others); then the common mode itself."""
        p = self.params
        fresh = set()
        for w in closed:
            if w.ok + w.wrong < self.min_requests:
                continue
            key = (w.model, w.scenario, w.protocol, w.target)
            if key not in self.detectors:
                where = f" on {w.target}" if w.target else ""
                self.detectors[key] = DriftDetector(f"{w.model} {w.scenario} {w.protocol}{where}", p)
                self.points[key] = WindowPoints(p.warmup_windows + p.baseline_windows, p.current_windows)
            self.points[key].add((w.start_s, w.p50_ms, w.p99_ms, w.ok + w.wrong))
            fresh.add(key)
        if not fresh:
            return []
        columns = {key: points.columns() for key, points in self.points.items()}
        changes = {key: self.detectors[key].change(columns[key][1]) for key in columns
                   if self.detectors[key].ready(self.points[key].count)}
        out: list[Verdict] = []
        for key in sorted(fresh):
            others = [c for k, c in changes.items() if k != key]
            reference = float(np.median(others)) if len(others) >= 2 else 1.0
            t, p50, p99, answered = columns[key]
            out += [self._attributed(v, key[0], stages) for v in
                    self.detectors[key].evaluate(t, p50, p99, now, answered, reference, self.points[key].count)]
        if len(changes) >= 3:
            out += self._common(columns, changes, now)
        return out

    def _common(self, columns: dict[Key, list[np.ndarray]], changes: dict[Key, float], now: float) -> list[Verdict]:
        """The median over series of each window's p50 and p99 relative to the series' own
        baseline: a server (or host) that slows everything down drifts here. Windows are matched
        by start time; the kept ones (each series' first and latest) are what the common mode's
        own baseline and current windows are drawn from. A common window counts the answers of
        its thinnest series: p99 is judged only where every series behind the median had enough
        requests for its own p99 to mean something (a median of the top few samples of several
        thin windows moves with every hiccup of a loaded host as much as one does)."""
        p = self.params
        base = slice(p.warmup_windows, p.warmup_windows + p.baseline_windows)
        by_start: dict[float, list[tuple[float, float, int]]] = collections.defaultdict(list)
        for key in changes:
            t, p50, p99, answered = columns[key]
            b50, b99 = float(np.median(p50[base])), float(np.median(p99[base]))
            for start, v50, v99, n in zip(t.tolist(), p50.tolist(), p99.tolist(), answered.tolist()):
                by_start[start].append((v50 / b50, v99 / b99, n))
        quorum = max(2, len(changes) // 2)
        starts = sorted(start for start, values in by_start.items() if len(values) >= quorum)
        t = np.array(starts)
        p50 = np.array([np.median([v[0] for v in by_start[x]]) for x in starts])
        p99 = np.array([np.median([v[1] for v in by_start[x]]) for x in starts])
        thinnest = np.array([min(v[2] for v in by_start[x]) for x in starts])
        if self.common is None:
            self.common = DriftDetector("all models", p)
        return self.common.evaluate(t, p50, p99, now, thinnest)
