"""The drift detector on synthetic window percentiles with fixed seeds: healthy noise and a
benign bump raise nothing; +1 %/min is flagged within 40 minutes of its onset."""

from __future__ import annotations

import numpy as np
import pytest

from engine.detectors.drift import LONG, DriftDetector

WINDOWS = 420  # 7 h of 1-min windows


def _windows(seed: int, drift_per_min: float = 0.0, onset: int = 120, bump: tuple[int, int] = (0, 0)):
    rng = np.random.default_rng(seed)
    n = np.arange(WINDOWS)
    ar = np.zeros(WINDOWS)
    for i in range(1, WINDOWS):  # autocorrelated window-to-window noise
        ar[i] = 0.7 * ar[i - 1] + rng.normal(0, 0.03)
    factor = np.exp(ar) * (1 + drift_per_min * np.clip(n - onset, 0, None))
    factor[bump[0]:bump[1]] *= 1.3
    p50 = 2.0 * factor
    p99 = 6.0 * factor * np.exp(rng.normal(0, 0.08, WINDOWS))
    return n * 60.0, p50, p99


def _run(t, p50, p99) -> DriftDetector:
    detector = DriftDetector("identity_fp32/identity/grpc", LONG)
    for end in range(1, WINDOWS + 1):
        detector.evaluate(t[:end], p50[:end], p99[:end], float(t[end - 1]))
    return detector


@pytest.mark.parametrize("seed", range(5))
def test_healthy_windows_raise_nothing(seed: int) -> None:
    assert _run(*_windows(seed)).raised == []


@pytest.mark.parametrize("seed", range(3))
def test_a_benign_bump_is_not_drift(seed: int) -> None:
    assert _run(*_windows(seed, bump=(200, 210))).raised == []


@pytest.mark.parametrize("seed", range(3))
def test_one_percent_a_minute_is_flagged_within_forty_minutes(seed: int) -> None:
    detector = _run(*_windows(seed, drift_per_min=0.01, onset=120))
    assert detector.raised, "no verdict"
    verdict = detector.raised[0]
    assert verdict.kind == "DRIFT" and verdict.size > 10
    assert verdict.at_s - 120 * 60 <= 40 * 60, verdict.at_s / 60


def test_what_moved_every_series_is_taken_out_by_the_reference() -> None:
    """A host that got 30 % slower moves every model: net of the others' median change (the
    reference) a model has not drifted; its own +1 %/min on top still shows."""
    t, p50, p99 = _windows(7)
    host = np.where(np.arange(WINDOWS) >= 120, 1.3, 1.0)
    assert _run(t, p50 * host, p99 * host).raised  # alone, a step of +30 % is a drift

    def run_with_reference(p50_series, p99_series) -> DriftDetector:
        detector = DriftDetector("m", LONG)
        for end in range(1, WINDOWS + 1):
            reference = detector.change(host[:end]) if detector.ready(end) else 1.0
            detector.evaluate(t[:end], p50_series[:end], p99_series[:end], float(t[end - 1]), reference=reference)
        return detector

    assert run_with_reference(p50 * host, p99 * host).raised == []
    _, own50, own99 = _windows(7, drift_per_min=0.01)
    assert run_with_reference(own50 * host, own99 * host).raised
