"""tools/soak/real.py's figures (the soak itself runs for hours: `make soak`): a process whose RSS
rises while the aggregator's bounded history fills and then stays flat is told apart from one that
keeps growing, by the slope after the retention has filled."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "soak"))

import real  # noqa: E402  (tools/soak/real.py; it puts the benchmarks' modules on sys.path)
from footprint import MIB, Series  # noqa: E402


def _series(mib_at: Callable[[int], float]) -> Series:
    series = Series("aggregator", True, [1], 0.0)
    for minute in range(0, 121):
        at = minute * 60.0
        series.add(at, int(mib_at(minute) * MIB), int(mib_at(minute) * MIB / 2))
    return series


def test_the_retention_fill_of_the_long_profile_is_its_stage_history_spans() -> None:
    assert real.retention_filled_s("long") == 74 * 60  # warm-up + baseline + 2 windows + leak warm-up, + 32 min
    assert real.retention_filled_s("smoke") < 10 * 60


def test_growth_that_stops_once_the_retention_filled_is_told_apart_from_a_leak() -> None:
    filled = real.retention_filled_s("long")
    settles = real.process_figures(_series(lambda m: 100 + 1.5 * min(m, 74) / 60), 7200.0, 60.0, filled)
    leaks = real.process_figures(_series(lambda m: 100 + 1.5 * m / 60), 7200.0, 60.0, filled)
    assert settles.rss_slope > 1.0 and leaks.rss_slope > 1.0  # after warm-up both rise
    assert abs(settles.rss_filled_slope) < 0.05
    assert leaks.rss_filled_slope == pytest.approx(1.5, rel=0.05)
    short = real.process_figures(_series(lambda m: 100.0), 7200.0, 60.0, 110 * 60.0)  # 10 min after it
    assert short.rss_filled_slope is None  # too little load after the fill to fit a slope


def test_the_aggregator_is_judged_once_its_history_has_filled_and_the_others_after_warm_up() -> None:
    filled = real.retention_filled_s("long")
    settles = real.process_figures(_series(lambda m: 100 + 1.5 * min(m, 74) / 60), 7200.0, 60.0, filled)
    [rss, _, _] = real.process_targets(settles, filled)
    assert rss.met and "from minute 74" in rss.goal and "after warm-up +1." in rss.measured
    leaking = real.process_figures(_series(lambda m: 100 + 1.5 * m / 60), 7200.0, 60.0, filled)
    assert not real.process_targets(leaking, filled)[0].met
    worker = dataclasses.replace(settles, label="worker-0")  # no bounded history of its own to fill
    assert not real.process_targets(worker, filled)[0].met
