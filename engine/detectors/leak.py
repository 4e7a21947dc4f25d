"""Memory leak detection on one process's memory series (DETECTION.md §3, host memory).

Two verdicts, each needing an effect size in real units, a significance test that accounts for
autocorrelation, a minimum observation time, and persistence over consecutive evaluations:

- GROWTH (early alarm): over the latest hours (`growth_window_s`), the lower confidence bound of
  the slope exceeds a large gate and the growth is not decelerating. Withdrawn as PLATEAU when the
  growth stops and the floor (lowest values) of the latest data has stopped rising too (a cache
  that filled; a ratchet that frees part of what it took keeps a rising floor and stays a GROWTH).
  After a PLATEAU, only growth in the data that follows raises a GROWTH again.
- BACKLOG (instead of GROWTH): the server's queued requests grew over the same window and
  explain the growth (memory against queue: bytes per queued request; what is left over grows
  slower than the gate). Requests waiting behind a stuck model hold memory; that is not a leak,
  and a leak during a backlog still shows as the growth left over.
- LEAK: over a long window, the lower bound exceeds a small gate, the 24 h projection is large
  enough to matter, and the last third of the window grows at least half as fast as the first
  (a leak keeps its pace; a filling cache slows down).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from .bins import MedianBins
from .trend import Trend, median_bins, robust_trend
from .verdict import Verdict

MIB = float(1 << 20)
HOUR = 3600.0


@dataclass(frozen=True)
class LeakParams:
    bin_s: float = 60.0  # samples are reduced to medians of this width
    warmup_s: float = 600.0  # at least this long, and at least warmup_fraction of the run
    warmup_fraction: float = 0.05
    growth_every_s: float = 60.0
    growth_min_data_s: float = 900.0
    growth_gate_mib_h: float = 256.0
    growth_gate_baseline_fraction_h: float = 0.25  # or this share of the baseline per hour, if larger
    # GROWTH, the early alarm, reads the latest hours: on day 4 of a flat run, a fit over all four
    # days would hide a fresh 400 MiB/h under three days of flat pairs. LEAK reads the long view.
    growth_window_s: float = 6 * HOUR
    leak_every_s: float = 600.0
    leak_after_s: float = 3 * HOUR  # or leak_after_fraction of the run, if sooner
    leak_after_fraction: float = 0.4
    leak_window_s: float = 2 * HOUR  # or half the post-warm-up data, if longer
    # ...and, once that is longer, the latest 12 hours as well: a leak that starts on day 4 of a
    # 6.5-day run is a small share of "half the data" for more than a day (tools/soak/compressed.py
    # plants one), and most of the latest 12 hours within hours.
    leak_recent_window_s: float = 12 * HOUR
    leak_gate_mib_h: float = 8.0
    leak_projection_mib: float = 64.0  # growth over 24 h must reach this much
    persistence: int = 3
    confidence: float = 0.99
    leak_enabled: bool = True


LONG = LeakParams()
# Short CI runs: strong faults only (DETECTION.md "smoke" profile).
SMOKE = LeakParams(bin_s=10.0, warmup_s=60.0, growth_every_s=10.0, growth_min_data_s=120.0,
                   growth_gate_mib_h=64.0, leak_enabled=False)


@dataclass
class LeakDetector:
    """Fed the process's samples as they arrive (`add`), judged with `evaluate`. Samples before
    warm-up are dropped and the rest reduced to `bin_s` medians at once, so the detector holds one
    median per bin (about 9,400 per series over 6.5 days), not every sample."""

    subject: str
    params: LeakParams = LONG
    run_s: float = 0.0  # planned run length (0: unknown)
    # Run second the process started (0: with the run). A process restarted at hour 50 fills its
    # caches again: its warm-up and the LEAK test's minimum data count from its own start.
    started_s: float = 0.0
    _growth_hits: int = 0
    _calm_hits: int = 0
    _leak_hits: int = 0
    _next_growth: float = 0.0
    _next_leak: float = 0.0
    growth_open: bool = False
    _growth_from: float = -np.inf  # after a PLATEAU, GROWTH is judged on new data only
    raised: list[Verdict] = field(default_factory=list)
    _bins: MedianBins | None = None
    _queue: MedianBins | None = None  # queued requests, in the same bins (the server's)
    _backlog_said: bool = False

    def _warmup(self) -> float:
        """The run second its warm-up ends."""
        return self.started_s + max(self.params.warmup_s, self.params.warmup_fraction * self.run_s)

    def add(self, t: float, rss: float, requests: float, queued: float | None = None) -> None:
        """One sample: t in run seconds, bytes, completed requests so far; `queued`: requests
        waiting in the process's queues (the server's pending counts), where they are known."""
        if t < self._warmup():
            return
        if self._bins is None:
            self._bins = MedianBins(self.params.bin_s)
        self._bins.add(t, rss, requests)
        if queued is not None:
            if self._queue is None:
                self._queue = MedianBins(self.params.bin_s)
            self._queue.add(t, queued, 0.0)

    def evaluate(self, now: float) -> list[Verdict]:
        """Judge the samples added so far; returns the verdicts raised now."""
        p = self.params
        out: list[Verdict] = []
        if self._bins is None or len(self._bins) < 1:
            return out
        t, rss, reqs = self._bins.arrays()
        span = self._bins.last_t - self._bins.first_t
        fresh = self._bins.last_t - max(self._bins.first_t, self._growth_from)
        if now >= self._next_growth and fresh >= p.growth_min_data_s:
            self._next_growth = now + p.growth_every_s
            recent = t >= t[-1] - p.growth_window_s
            queued = self._queued(len(t))
            out += self._growth(t[recent], rss[recent], now, reqs[recent], self._bins.floors()[recent],
                                queued[recent] if queued is not None else None)
        if not p.leak_enabled and t[0] < t[-1] - 2 * p.growth_window_s:
            # Only GROWTH reads the bins, and only its window's: the rest would grow with the run
            # (10 s bins of a smoke-profile run left on for days). Trimmed once per window length.
            for bins in (self._bins, self._queue):
                if bins is not None:
                    bins.drop_before(t[-1] - p.growth_window_s)
        after = self.started_s + (min(p.leak_after_s, p.leak_after_fraction * self.run_s) if self.run_s
                                  else p.leak_after_s)
        if p.leak_enabled and now >= self._next_leak and now >= after:
            self._next_leak = now + p.leak_every_s
            windows = [max(p.leak_window_s, span / 2)]
            if windows[0] > p.leak_recent_window_s:
                windows.append(p.leak_recent_window_s)
            out += self._leak([t >= t[-1] - window for window in windows], t, rss, now, reqs)
        self.raised += out
        return out

    def _queued(self, bins: int) -> np.ndarray | None:
        """Queued requests per bin, when every bin has them."""
        if self._queue is None:
            return None
        queued = self._queue.arrays()[1]
        return queued if len(queued) == bins else None

    def _growth(self, wx: np.ndarray, wy: np.ndarray, now: float, wreqs: np.ndarray,
                floors: np.ndarray, wqueued: np.ndarray | None = None) -> list[Verdict]:
        """wx, wy, wreqs: the window's bin medians of time, RssAnon and completed requests; floors:
        their minima; wqueued: queued requests. Growth is judged on the data since the last
        PLATEAU; calm, on the window."""
        p = self.params
        new = wx >= self._growth_from
        bx, by, reqs = wx[new], wy[new], wreqs[new]
        if len(bx) < 6:
            return []
        trend = robust_trend(bx / HOUR, by / MIB, p.confidence)
        gate = max(p.growth_gate_mib_h, p.growth_gate_baseline_fraction_h * by[0] / MIB)
        # Deceleration is judged against completed requests when they are known: a leak per
        # request slows down in time when the load does, and is still a leak; a cache that fills
        # slows down per request as well.
        pace = reqs if reqs[-1] > reqs[0] else bx
        growing = trend.low > gate and not _decelerating(pace, by)
        evidence = {"slope_mib_h": trend.slope, "gate_mib_h": gate, "phi": trend.phi, "points": trend.n}
        if growing:
            self._growth_hits += 1
            self._calm_hits = 0
        else:
            self._growth_hits = 0
            # Calm needs evidence of an asymptote: the floor of the latest third of the window has
            # stopped rising at the alarm's pace. A partial free makes the median look calm (the
            # fit's lower bound drops, the last third looks slower); the floor of a ratchet whose
            # frees come more often than that third keeps rising.
            latest = wx >= wx[-1] - (wx[-1] - wx[0]) / 3
            rise = _floor_rise_mib_h(wx[latest], floors[latest])
            flat = rise is not None and rise <= gate
            self._calm_hits = self._calm_hits + 1 if flat else 0
            if rise is not None:
                evidence["floor_rise_mib_h"] = rise
        if not self.growth_open and self._growth_hits >= p.persistence:
            backlog = _backlog(bx, by, wqueued[new], gate, p.confidence) if wqueued is not None else None
            if backlog is not None and backlog["growth_beyond_backlog_low_mib_h"] <= gate:
                # The queue explains the growth: requests waiting in the server hold memory. Said
                # once, as what it is; a growth beyond it would still be a GROWTH.
                self._growth_hits = 0
                if self._backlog_said:
                    return []
                self._backlog_said = True
                return [Verdict("leak", "BACKLOG", self.subject, float(bx[0]), now, trend.slope, "MiB/h", trend.low,
                                trend.high, {**evidence, **backlog})]
            self.growth_open = True
            evidence.update(_per_request(reqs, by, len(bx), p.confidence))
            evidence.update(backlog or {})
            return [Verdict("leak", "GROWTH", self.subject, float(bx[0]), now, trend.slope, "MiB/h", trend.low,
                            trend.high, evidence)]
        if self.growth_open and self._calm_hits >= p.persistence:
            self.growth_open = False
            self._growth_from = now  # a GROWTH again needs growth in what comes next
            level = float(np.median(by[-max(3, len(by) // 10):]) / MIB)
            return [Verdict("leak", "PLATEAU", self.subject, float(bx[0]), now, level, "MiB", level, level,
                            {**evidence, "asymptote_mib": level})]
        return []

    def _leak(self, windows: list[np.ndarray], t: np.ndarray, rss: np.ndarray, now: float,
              reqs: np.ndarray) -> list[Verdict]:
        """One LEAK evaluation: leaking when any of the windows (masks over the bins) shows a
        steady growth; raised once, when persistence is first reached."""
        p = self.params
        found = None
        for keep in windows:
            found = self._leak_window(t[keep], rss[keep], reqs[keep])
            if found is not None:
                break
        self._leak_hits = self._leak_hits + 1 if found is not None else 0
        if found is None or self._leak_hits != p.persistence:
            return []
        bx, trend, evidence = found
        return [Verdict("leak", "LEAK", self.subject, float(bx[0]), now, trend.slope, "MiB/h", trend.low, trend.high,
                        evidence)]

    def _leak_window(self, bx: np.ndarray, by: np.ndarray, reqs: np.ndarray) -> tuple[np.ndarray, Trend, dict] | None:
        """The window's trend and evidence when it grows steadily enough to be a leak, else None."""
        p = self.params
        if len(bx) < 12:
            return None
        trend = robust_trend(bx / HOUR, by / MIB, p.confidence)
        thirds = np.array_split(np.arange(len(bx)), 3)
        first = robust_trend(bx[thirds[0]] / HOUR, by[thirds[0]] / MIB, p.confidence).slope
        last = robust_trend(bx[thirds[-1]] / HOUR, by[thirds[-1]] / MIB, p.confidence).slope
        steady = last >= 0.5 * first and last > p.leak_gate_mib_h
        if not (trend.low > p.leak_gate_mib_h and trend.slope * 24 > p.leak_projection_mib and steady):
            return None
        evidence = {"slope_mib_h": trend.slope, "first_third_mib_h": first, "last_third_mib_h": last,
                    "gate_mib_h": p.leak_gate_mib_h, "phi": trend.phi, "window_h": (bx[-1] - bx[0]) / HOUR}
        evidence.update(_per_request(reqs, by, len(bx), p.confidence))
        return bx, trend, evidence


def _floor_rise_mib_h(bx: np.ndarray, floors: np.ndarray) -> float | None:
    """How fast the floor rises over the bins given: cut in three, the lowest value of each part,
    the last part's against the first's, per hour. What a process keeps for good lifts every
    part's lowest value; what it frees again (a ratchet's partial frees, a cache's churn) does
    not. None with too few bins to tell."""
    if len(bx) < 9:
        return None
    parts = np.array_split(np.arange(len(bx)), 3)
    first, last = parts[0], parts[-1]
    hours = (np.mean(bx[last]) - np.mean(bx[first])) / HOUR
    return float((floors[last].min() - floors[first].min()) / MIB / hours) if hours > 0 else None


MIN_QUEUE_RISE = 20.0  # queued requests: a backlog smaller than this explains nothing


def _backlog(bx: np.ndarray, by: np.ndarray, queued: np.ndarray, gate: float, confidence: float
             ) -> dict[str, float] | None:
    """When the queue grew over the window, how much of the memory's growth it explains. Memory
    is fitted on the queue and on time together (least squares on the bins' medians): the queue's
    coefficient is the bytes each queued request holds, time's is the growth left over, with an
    interval widened for autocorrelation as in `robust_trend`. While queue and a leak grow in
    lockstep the two cannot be told apart and the interval says so (it is wide); once the queue
    stops or drains, a leak stands out. None when the queue did not grow."""
    n = len(queued)
    if n < 8 or float(np.max(queued) - queued[0]) < MIN_QUEUE_RISE:
        return None
    x = np.column_stack([np.ones(n), queued, (bx - bx[0]) / HOUR])
    y = by / MIB
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    residuals = y - x @ coef
    variance = float(residuals @ residuals) / (n - 3)
    spread = np.sqrt(max(variance * float(np.linalg.pinv(x.T @ x)[2, 2]), 0.0))
    phi = 0.0
    if np.std(residuals[:-1]) > 0 and np.std(residuals[1:]) > 0:
        phi = float(np.clip(np.corrcoef(residuals[:-1], residuals[1:])[0, 1], 0.0, 0.95))
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    low = float(coef[2]) - z * spread * np.sqrt((1 + phi) / (1 - phi))
    return {"queued_first": float(queued[0]), "queued_last": float(queued[-1]),
            "bytes_per_queued_request": float(coef[1]) * MIB, "growth_beyond_backlog_mib_h": float(coef[2]),
            "growth_beyond_backlog_low_mib_h": low, "backlog_gate_mib_h": gate}


def _per_request(reqs: np.ndarray, by: np.ndarray, points: int, confidence: float) -> dict[str, float]:
    """Bytes per completed request (with its interval) of the growth: the process's own model's
    requests for a stub, all requests for the server. Empty when no request completed."""
    if len(reqs) < 3 or reqs[-1] <= reqs[0]:
        return {}
    rx, ry = median_bins(reqs, by, max(1.0, (reqs[-1] - reqs[0]) / max(points, 1)))
    if len(rx) < 3:
        return {}
    per_request = robust_trend(rx, ry, confidence)
    return {"bytes_per_request": per_request.slope, "bytes_per_request_low": per_request.low,
            "bytes_per_request_high": per_request.high}


def _decelerating(x: np.ndarray, y: np.ndarray) -> bool:
    """Last third of the window grows at less than half the pace of the first third."""
    thirds = np.array_split(np.arange(len(x)), 3)
    if min(len(part) for part in thirds) < 3:
        return False
    first = robust_trend(x[thirds[0]], y[thirds[0]]).slope
    last = robust_trend(x[thirds[-1]], y[thirds[-1]]).slope
    return first > 0 and last < 0.5 * first
