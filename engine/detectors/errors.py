"""Errors and wrong answers, per scenario and model, from closed windows (DETECTION.md §3).

They catch what no resource signal shows (state leaking between sequences, a backend that
answers garbage), so any occurrence is a finding, as in the reference suite: a negative
scenario's *expected* error is not one, a *missing* expected error is. Each (detector, model,
scenario) is raised once, at its first window, with the first texts the workers sent; the
counts over the whole run are in the windows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from engine.window_stats import WindowStats

from .verdict import Verdict


@dataclass
class ErrorDetector:
    """`errors`: failed requests and missing expected errors; `wrong_answers`: validation failures."""

    enabled: tuple[str, ...] = ("errors", "wrong_answers")
    raised: list[Verdict] = field(default_factory=list)
    _seen: set[tuple[str, str, str, str]] = field(default_factory=set)

    def evaluate(self, windows: Iterable[WindowStats], now_s: float,
                 samples: Mapping[str, list[str]] | None = None) -> list[Verdict]:
        """`samples`: scenario -> first texts of its error events (the workers' event stream)."""
        samples = samples or {}
        out: list[Verdict] = []
        for w in windows:
            for detector, kind, count in (("errors", "ERRORS", w.errors), ("errors", "MISSING-ERROR", w.missing_errors),
                                          ("wrong_answers", "WRONG", w.wrong)):
                key = (kind, w.model, w.scenario, w.target)
                if count == 0 or detector not in self.enabled or key in self._seen:
                    continue
                self._seen.add(key)
                rate = count / max(1, w.requests)
                out.append(Verdict(
                    detector, kind, f"{w.model} in {w.scenario} over {w.protocol}"
                    + (f" on {w.target}" if w.target else ""), w.start_s, now_s, float(count),
                    "requests", float(count), float(count),
                    {"window_requests": float(w.requests), "window_rate": rate, "window_s": w.length_s},
                    tuple(samples.get(w.scenario, ())[:3]),
                ))
        self.raised += out
        return out
