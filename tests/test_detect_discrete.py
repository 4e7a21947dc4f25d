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
    raised = []
    for end in range(60, len(t), 10):
        raised += detector.evaluate(t[:end], values[:end], float(t[end - 1]))
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
    assert [v for end in range(60, 600, 10) for v in detector.evaluate(t[:end], values[:end], t[end - 1])] == []
    steady = DiscreteLeakDetector("s", "fds", PARAMS)  # the same series passes the default gate
    assert [v for end in range(60, 600, 10) for v in steady.evaluate(t[:end], values[:end], t[end - 1])]
