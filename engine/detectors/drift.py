"""Latency drift on per-window percentiles of one (model, scenario, protocol) (DETECTION.md §3).

The run's own baseline (windows just after warm-up) against its recent windows: a relative gate
on the median of p50 or of p99 (of the current windows, and of the latest few), a one-sided
Mann-Whitney test on the log values, and persistence over consecutive evaluations, so a benign
bump does not become a verdict."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from .verdict import Verdict


@dataclass(frozen=True)
class DriftParams:
    warmup_windows: int = 10
    baseline_windows: int = 20
    current_windows: int = 30
    p50_gate: float = 0.10  # +10 % of the baseline median
    p99_gate: float = 0.25
    p_value: float = 1e-3
    persistence: int = 5
    # p99 is judged only on windows this full: from fewer, it is one of the top few samples, and
    # moves with every hiccup of a loaded machine.
    p99_min_requests: int = 1000
    # The latest windows must be past the gate too: a bump that came and went still fills much of
    # the current span (a 35 s hiccup of the host is 7 of the smoke profile's 12 windows), but a
    # drift is still there at its verdict. A monotone drift's latest windows are its highest, so
    # this only holds back bumps that have passed.
    recent_windows: int = 3


LONG = DriftParams()
# Short runs judge minutes against minutes: on a loaded small host every model's p50 swings over a
# minute by more than the long profile's gate (the acceptance runs show it), so the smoke gates are
# for strong drifts only.
SMOKE = DriftParams(warmup_windows=3, baseline_windows=6, current_windows=12, persistence=3, p50_gate=0.25,
                    p99_gate=0.50)


@dataclass
class DriftDetector:
    subject: str
    params: DriftParams = LONG
    _hits: int = 0
    open: bool = False
    raised: list[Verdict] = field(default_factory=list)

    def ready(self, count: int) -> bool:
        p = self.params
        return count >= p.warmup_windows + p.baseline_windows + p.current_windows

    def change(self, values: np.ndarray) -> float:
        """median(current) / median(baseline) of a series (windows as in `evaluate`)."""
        p = self.params
        values = np.asarray(values, float)
        baseline = values[p.warmup_windows:p.warmup_windows + p.baseline_windows]
        return float(np.median(values[-p.current_windows:]) / np.median(baseline))

    def evaluate(self, t: np.ndarray, p50: np.ndarray, p99: np.ndarray, now: float,
                 answered: np.ndarray | None = None, reference: float = 1.0,
                 count: int | None = None) -> list[Verdict]:
        """t: window starts (run seconds); p50, p99: each window's percentiles (same unit);
        answered: each window's answered requests (None: every window is full enough for p99);
        reference: how much the run's other series moved over the same windows (their median
        change): what moved them all is the host or the server, and is judged on its own.
        The windows between the baseline and the current ones may be left out; `count` says how
        many there were in all (None: every window is given)."""
        p = self.params
        if not self.ready(len(t)):
            return []
        base = slice(p.warmup_windows, p.warmup_windows + p.baseline_windows)
        current_span = slice(len(t) - p.current_windows, len(t))
        p50 = np.asarray(p50, float).copy()
        p99 = np.asarray(p99, float).copy()
        p50[current_span] /= reference
        p99[current_span] /= reference
        findings = []
        used = np.r_[np.arange(len(t))[base], np.arange(len(t))[-p.current_windows:]]
        judged = [("p50", np.asarray(p50, float), p.p50_gate)]
        if answered is None or np.min(np.asarray(answered)[used]) >= p.p99_min_requests:
            judged.append(("p99", np.asarray(p99, float), p.p99_gate))
        for name, values, gate in judged:
            baseline, current = values[base], values[-p.current_windows:]
            change = float(np.median(current) / np.median(baseline) - 1)
            recent = float(np.median(values[-p.recent_windows:]) / np.median(baseline) - 1)
            if change <= gate or recent <= gate:
                continue
            test = stats.mannwhitneyu(np.log(current), np.log(baseline), alternative="greater")
            if test.pvalue < p.p_value:
                spread = np.percentile(current / np.median(baseline) - 1, [25, 75])
                findings.append((name, change, float(spread[0]), float(spread[1]), float(test.pvalue), gate))
        self._hits = self._hits + 1 if findings else 0
        if self.open or self._hits < p.persistence:
            return []
        self.open = True
        name, change, low, high, pvalue, gate = max(findings, key=lambda f: f[1] / f[5])
        verdict = Verdict("drift", "DRIFT", f"{self.subject} {name}", float(t[-p.current_windows]), now,
                          100 * change, "%", 100 * low, 100 * high,
                          {"p_value": pvalue, "gate_pct": 100 * gate, "common_mode_pct": 100 * (reference - 1),
                           "baseline_median": float(np.median(
                              (p50 if name == "p50" else p99)[base])),
                           "windows": float(len(t) if count is None else count),
                           "baseline_from_s": float(t[base][0]), "baseline_last_s": float(t[base][-1]),
                           "current_last_s": float(t[-1])})
        self.raised.append(verdict)
        return [verdict]
