"""A process restarted in the middle of a run gets its own warm-up (issue 17, item 4): its
start-up growth (threads of a pool spinning up, arenas filling) is not judged as a leak, while the
same growth long after its start still is."""

from __future__ import annotations

import dataclasses

import numpy as np

from engine.aggregator.resources import ResourceWatch
from engine.detectors import discrete, drift, leak, stall
from engine.detectors.settings import DetectorSettings

MIB = float(1 << 20)
HOUR = 3600.0
RUN_S = 7 * HOUR  # warm-up: max(10 min, 5 % of the run) = 21 min from each process's start
SAMPLE_S = 20.0
STUB = "proc/stub/model_0_0"


def _settings() -> DetectorSettings:
    return DetectorSettings(enabled=("leak",), fatal=(), window_s=60.0, sample_interval_s=5.0, leak=leak.LONG,
                            drift=drift.LONG, stall=stall.LONG, drift_min_requests=100,
                            discrete=discrete.DiscreteParams())


def _threads(since_start_s: float) -> float:
    """A stub's thread pool: 6 threads, one more per minute over its first 8 minutes, then steady."""
    return 6.0 + min(8.0, np.floor(since_start_s / 60.0))


def _feed(watch: ResourceWatch, start_s: float, end_s: float, process_start_s: float, pid: float) -> list:
    verdicts = []
    for at in np.arange(start_s, end_s, SAMPLE_S):
        since = at - process_start_s
        watch.add(float(at), {f"{STUB}/pid": pid, f"{STUB}/threads": _threads(since),
                              f"{STUB}/rss_anon": 200 * MIB + 40 * MIB * min(1.0, since / 480.0)},
                  requests=at * 100, completed={"model": int(at * 100)})
        if int(at) % 60 == 0:
            verdicts += watch.evaluate(float(at))
    return verdicts


def test_a_restarted_stub_gets_its_own_warm_up() -> None:
    watch = ResourceWatch(_settings(), RUN_S)
    restart = 4 * HOUR
    before = _feed(watch, 0.0, 2 * HOUR, 0.0, pid=100.0)  # the first process: warm-up from the run's start
    watch.add(restart - HOUR, {f"{STUB}/pid": 100.0}, 0, {})
    after = _feed(watch, restart, restart + 2 * HOUR, restart, pid=200.0)  # a new pid at hour 4
    assert before == [] and after == [], [v.describe() for v in before + after]
    # The new process's series start after its warm-up, not at once.
    leak_detector = watch.leak[f"{STUB}/rss_anon"]
    assert leak_detector.started_s == restart
    assert leak_detector._bins is not None and leak_detector._bins.first_t >= restart + 0.05 * RUN_S


def test_growth_long_after_a_restart_is_still_judged() -> None:
    """The warm-up is the process's, not a blind spot: threads that keep growing well after the
    restarted stub's warm-up are a leak, named with the new pid."""
    watch = ResourceWatch(_settings(), RUN_S)
    _feed(watch, 0.0, HOUR, 0.0, pid=100.0)
    restart = 4 * HOUR
    verdicts = []
    for at in np.arange(restart, restart + 2 * HOUR, SAMPLE_S):
        leaked = max(0.0, np.floor((at - restart - 1200.0) / 60.0))  # a thread a minute from 20 min on
        watch.add(float(at), {f"{STUB}/pid": 200.0, f"{STUB}/threads": 6.0 + leaked}, at * 100, {})
        if int(at) % 60 == 0:
            verdicts += watch.evaluate(float(at))
    assert [v.kind for v in verdicts] == ["LEAK"], [v.describe() for v in verdicts]
    assert "pid 200" in verdicts[0].subject and verdicts[0].since_s >= restart + discrete.DiscreteParams().warmup_s


def test_a_process_first_seen_late_gets_a_warm_up_too() -> None:
    """A stub whose model loads mid-run (no pid before) starts its own warm-up when first seen."""
    watch = ResourceWatch(_settings(), RUN_S)
    watch.add(0.0, {"proc/server/pid": 1.0, "proc/server/threads": 40.0}, 0, {})
    late = 3 * HOUR
    verdicts = _feed(watch, late, late + HOUR, late, pid=300.0)
    assert verdicts == [], [v.describe() for v in verdicts]
    assert watch.discrete[f"{STUB}/threads"].started_s == late


def test_settings_dataclass_is_what_the_aggregator_resolves() -> None:
    """Guard for the helper above: the long profile's parameters are the shipped defaults."""
    assert dataclasses.asdict(_settings().discrete) == dataclasses.asdict(discrete.DiscreteParams())
