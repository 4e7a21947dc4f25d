"""The leak detector on synthetic series with fixed seeds (DETECTION.md §4): a plateau is not a
leak, 16 MiB/h is, a big leak is an early GROWTH, and healthy noise raises nothing."""

from __future__ import annotations

import numpy as np
import pytest

from engine.detectors.leak import LONG, LeakDetector

MIB = float(1 << 20)
RUN_S = 7 * 3600.0
SAMPLE_S = 15.0  # coarser than the monitor's 5 s, to keep the test quick; the detector bins to 1 min


def _noise(rng: np.random.Generator, n: int, sigma: float = 3e6, phi: float = 0.8) -> np.ndarray:
    """AR(1) noise: what real memory series look like, and what fools naive trend tests."""
    e = rng.normal(0, sigma * np.sqrt(1 - phi ** 2), n)
    out = np.empty(n)
    out[0] = e[0]
    for i in range(1, n):
        out[i] = phi * out[i - 1] + e[i]
    return out


def _series(seed: int, leak_mib_h: float = 0.0, cache_mib: float = 0.0, tau_s: float = 1800.0):
    rng = np.random.default_rng(seed)
    t = np.arange(0, RUN_S, SAMPLE_S)
    warm = 40 * MIB * (1 - np.exp(-t / 300))  # allocator arenas filling in the first minutes
    cache = cache_mib * MIB * (1 - np.exp(-t / tau_s))
    rss = 400 * MIB + warm + cache + leak_mib_h * MIB * t / 3600 + _noise(rng, len(t))
    return t, rss


def _run(t: np.ndarray, rss: np.ndarray) -> LeakDetector:
    detector = LeakDetector("tritonserver", LONG, RUN_S)
    requests = t * 100.0  # a steady load
    for i in range(len(t)):
        detector.add(float(t[i]), float(rss[i]), float(requests[i]))
        if i >= 39 and (i - 39) % 8 == 0:  # an evaluation every two minutes
            detector.evaluate(float(t[i]))
    return detector


@pytest.mark.parametrize("seed", range(3))
def test_healthy_noise_raises_nothing(seed: int) -> None:
    assert _run(*_series(seed)).raised == []


@pytest.mark.parametrize("seed", range(2))
def test_a_filling_cache_is_not_a_leak(seed: int) -> None:
    detector = _run(*_series(seed, cache_mib=600, tau_s=1800))
    kinds = [v.kind for v in detector.raised]
    assert "LEAK" not in kinds
    if "GROWTH" in kinds:  # an early alarm is allowed, but must be withdrawn as a plateau
        assert kinds[-1] == "PLATEAU"


@pytest.mark.parametrize("seed", range(2))
def test_sixteen_mib_an_hour_is_a_leak_with_the_right_size(seed: int) -> None:
    detector = _run(*_series(seed, leak_mib_h=16))
    leaks = [v for v in detector.raised if v.kind == "LEAK"]
    assert leaks, [v.describe() for v in detector.raised]
    assert 8 <= leaks[0].size <= 32  # within a factor of 2 of the truth
    assert leaks[0].low > 8  # the gate, echoed in the evidence
    assert leaks[0].evidence["gate_mib_h"] == 8


def test_a_big_leak_is_an_early_growth_alarm() -> None:
    t, rss = _series(0, leak_mib_h=512)
    detector = _run(t, rss)
    growth = next(v for v in detector.raised if v.kind == "GROWTH")
    assert growth.at_s - LONG.warmup_s <= 45 * 60  # DETECTION.md: about 17 min after warm-up
    assert 256 <= growth.size <= 1024
    # 512 MiB/h at 100 requests/s: about 1,490 bytes per request, said with the verdict.
    assert 745 <= growth.evidence["bytes_per_request"] <= 2980
    assert "bytes/request" in growth.describe()


def test_a_series_flat_but_for_one_point_fits_without_a_warning() -> None:
    """A counter that stays flat and then moves once (a stub's first sample after idling) must
    not print numpy's 'invalid value encountered in divide' on the run's console."""
    import warnings

    from engine.detectors.trend import robust_trend

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trend = robust_trend(np.arange(10.0), np.r_[np.zeros(9), 5.0])
    assert trend.phi == 0.0 and trend.slope == 0.0


def _days_then_leak(seed: int, leak_mib_h: float, onset_s: float, end_s: float, run_s: float) -> list:
    """A process flat (AR(1) noise) for days, then leaking from `onset_s`; a sample every 5 min."""
    rng = np.random.default_rng(seed)
    t = np.arange(0.0, end_s, 300.0)
    rss = 400 * MIB + _noise(rng, len(t)) + leak_mib_h * MIB * np.clip(t - onset_s, 0.0, None) / 3600
    detector = LeakDetector("stub/m_0_0", LONG, run_s)
    for i in range(len(t)):
        detector.add(float(t[i]), float(rss[i]), float(t[i] * 100.0))
        detector.evaluate(float(t[i]))
    return detector.raised


@pytest.mark.parametrize("seed", [3, 4])
def test_a_leak_that_starts_on_day_three_is_found_within_hours(seed: int) -> None:
    """Half the data of a multi-day run is mostly flat for a day after a late onset: the latest
    12 hours are read too, so a 16 MiB/h leak from day 3 is a LEAK the same day, not two days on."""
    day = 24 * 3600.0
    raised = _days_then_leak(seed, 16.0, 3 * day, 4 * day, 6.5 * day)
    leaks = [v for v in raised if v.kind == "LEAK"]
    assert leaks, [v.describe() for v in raised]
    assert 3 * day < leaks[0].at_s < 3 * day + 16 * 3600, leaks[0].describe()


def test_four_flat_days_raise_nothing() -> None:
    """The control: the same noise, no leak, read through both windows for four days."""
    raised = _days_then_leak(5, 0.0, 0.0, 4 * 24 * 3600.0, 6.5 * 24 * 3600.0)
    assert raised == [], [v.describe() for v in raised]
