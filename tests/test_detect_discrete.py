"""Countable resources: a steady rise of the floor is a leak; churn and a one-time step are not."""

from __future__ import annotations

import dataclasses

import numpy as np

from engine.detectors.discrete import DiscreteLeakDetector, DiscreteParams

PARAMS = DiscreteParams(bin_s=10.0, warmup_s=30.0, min_rise=8.0)


def _run(values_of_t, seconds: float = 600.0, seed: int = 5) -> list:
    rng = np.random.default_rng(seed)
    detector = DiscreteLeakDetector("proc/server fds", "fds", PARAMS)
    t = np.arange(0.0, seconds, 1.0)
    # Churn: connections open and close above the floor, up to 6 at a time.
    values = np.array([values_of_t(x) for x in t]) + rng.integers(0, 7, len(t))
    return _feed(detector, t, values)


def _feed(detector: DiscreteLeakDetector, t: np.ndarray, values: np.ndarray) -> list:
    """Samples one by one, an evaluation every 10 of them (as the aggregator's ticks do)."""
    raised = []
    for i in range(len(t)):
        detector.add(float(t[i]), float(values[i]))
        if i >= 59 and (i - 59) % 10 == 0:
            raised += detector.evaluate(float(t[i]))
    return raised


def test_one_fd_every_ten_seconds_is_a_leak() -> None:
    [verdict] = _run(lambda x: 100 + x // 10)
    assert verdict.kind == "LEAK" and verdict.unit == "fds/h"
    assert 200 < verdict.size < 500  # 360 fds/h
    assert verdict.at_s < 200  # within a few minutes of the warm-up


def test_churn_and_a_pool_that_grows_once_are_not() -> None:
    assert _run(lambda x: 100) == []
    assert _run(lambda x: 100 if x < 200 else 140) == []  # a step of 40: rises once, then stays


def test_a_rise_below_the_gate_is_not() -> None:
    slow = dataclasses.replace(PARAMS, min_rise=1000.0)
    detector = DiscreteLeakDetector("s", "fds", slow)
    t = np.arange(0.0, 600.0)
    values = 100 + t // 10
    assert _feed(detector, t, values) == []
    steady = DiscreteLeakDetector("s", "fds", PARAMS)  # the same series passes the default gate
    assert _feed(steady, t, values)


def test_persistence_counts_bins_not_evaluations() -> None:
    """A thread pool that grows by one thread a minute for four minutes, then stays flat for an hour:
    four rising steps in one window of five, but no three bins in a row that each show the rise.
    The aggregator evaluates every second; persistence counted in evaluations made this a LEAK of
    about 40 threads/h within three seconds."""
    params = DiscreteParams(bin_s=60.0, warmup_s=60.0, min_rise=4.0)
    detector = DiscreteLeakDetector("proc/stub/m_0_0 threads", "threads", params)
    t = np.arange(0.0, 4500.0, 1.0)
    values = 20 + np.clip((t - 120) // 60, 0, 4)  # +1 a minute from minute 3 to minute 6, then flat
    raised = []
    for i in range(len(t)):
        detector.add(float(t[i]), float(values[i]))
        raised += detector.evaluate(float(t[i]))  # every second, as the aggregator does
    assert raised == []
    # A pool that keeps growing one thread a minute is a leak, judged the same way.
    leaking = DiscreteLeakDetector("proc/stub/m_0_0 threads", "threads", params)
    grow = 20 + np.clip((t - 120) // 60, 0, None)
    raised = []
    for i in range(len(t)):
        leaking.add(float(t[i]), float(grow[i]))
        raised += leaking.evaluate(float(t[i]))
    [verdict] = raised
    assert 50 < verdict.size < 70  # 60 threads/h
