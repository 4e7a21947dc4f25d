"""The aggregator's detector state does not grow with the run: samples are reduced to bins as
they arrive (the same medians and floors as binning the whole series), drift keeps only the
windows it compares, and hours of monitor samples leave its memory where it was."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from engine.aggregator.drift_watch import DriftWatch, WindowPoints
from engine.aggregator.series import RecentSamples
from engine.aggregator.service import Aggregator, AggregatorSpec
from engine.config._sections import DetectorsSection
from engine.detectors.bins import FloorBins, MedianBins
from engine.detectors.settings import resolve_settings
from engine.detectors.trend import median_bins
from engine.window_stats import WindowStats
from workers.telemetry import KIND_RESOURCES, Message

MIB = float(1 << 20)


def _irregular_times(rng: np.random.Generator, n: int) -> np.ndarray:
    """Sample times with jitter and gaps, as a loaded monitor delivers them."""
    gaps = rng.uniform(0.5, 1.5, n)
    gaps[rng.integers(0, n, n // 50)] += 25.0  # a few stalls of the monitor longer than a bin
    return 100.0 + np.cumsum(gaps)


@pytest.mark.parametrize("seed", range(3))
def test_median_bins_as_samples_arrive_equal_binning_the_whole_series(seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = _irregular_times(rng, 3000)
    v = rng.normal(500.0, 20.0, len(t)) + t * 0.01
    requests = np.cumsum(rng.integers(0, 100, len(t))).astype(float)
    bins = MedianBins(10.0)
    for end, (x, y, r) in enumerate(zip(t, v, requests), start=1):
        bins.add(float(x), float(y), float(r))
        if end in (1, 2, 777, 3000):  # also mid-bin: the bin still filling counts as it stands
            bt, bv, br = bins.arrays()
            et, ev = median_bins(t[:end], v[:end], 10.0)
            _, er = median_bins(t[:end], requests[:end], 10.0)
            np.testing.assert_array_equal(bt, et)
            np.testing.assert_array_equal(bv, ev)
            np.testing.assert_array_equal(br, er)
    assert bins.first_t == t[0] and bins.last_t == t[-1]


def test_floor_bins_keep_the_first_floor_and_the_latest() -> None:
    rng = np.random.default_rng(4)
    t = _irregular_times(rng, 2000)
    v = rng.integers(0, 50, len(t)).astype(float) + t // 60
    bins = FloorBins(10.0, keep=6)
    for x, y in zip(t, v):
        bins.add(float(x), float(y))
    keys = np.floor((t - t[0]) / 10.0).astype(np.int64)
    edges = np.flatnonzero(np.diff(keys)) + 1
    floors = [part.min() for part in np.split(v, edges)][:-1]  # the last bin is still filling
    starts = [part[0] for part in np.split(t, edges)][:-1]
    got_starts, got_floors = bins.arrays()
    assert bins.closed == len(floors)
    np.testing.assert_array_equal(got_floors, [floors[0], *floors[-6:]])
    np.testing.assert_array_equal(got_starts, [starts[0], *starts[-6:]])
    few = FloorBins(10.0, keep=6)  # fewer bins than kept: each once
    for x, y in zip(t[:40], v[:40]):
        few.add(float(x), float(y))
    assert len(few.arrays()[1]) == few.closed


def test_recent_samples_answer_deltas_and_forget_old_ones() -> None:
    recent = RecentSamples(horizon_s=100.0)
    for second in range(10_000):
        recent.append(float(second), 0.5 * second)
    assert len(recent.t) <= 201
    t, cpu = recent.recent(9_950.5)
    assert t[0] == 9_950.0 and t[-1] == 9_999.0 and cpu[-1] - cpu[0] == pytest.approx(24.5)


def test_window_points_keep_the_baseline_and_the_latest_windows() -> None:
    points = WindowPoints(head=5, tail=3)
    for i in range(6):
        points.add((float(i), 1.0, 2.0, 100))
    assert points.columns()[0].tolist() == [0, 1, 2, 3, 4, 5]  # fewer than head + tail: all of them
    for i in range(6, 1000):
        points.add((float(i), 1.0, 2.0, 100))
    assert points.columns()[0].tolist() == [0, 1, 2, 3, 4, 997, 998, 999] and points.count == 1000


def _resource_message(seq: int, at_ns: int, rng: np.random.Generator) -> Message:
    """What the monitor sends each second: a server and eight stubs, every field it samples."""
    samples = {"shm/files": 4.0, "shm/bytes": 4.0 * MIB, "model/identity_fp32/pending": 0.0}
    for process, pid in [("server", 100)] + [(f"stub/identity_fp32_0_{i}", 200 + i) for i in range(8)]:
        for name, value in [("pid", pid), ("rss_anon", 300 * MIB + rng.normal(0, MIB)), ("rss_file", 50 * MIB),
                            ("rss_shmem", 8 * MIB), ("fds", 40 + rng.integers(0, 5)), ("threads", 30.0),
                            ("cpu_s", seq * 0.3)]:
            samples[f"proc/{process}/{name}"] = float(value)
    return Message(KIND_RESOURCES, "monitor", seq, {"time_ns": at_ns, "samples": samples})


@pytest.mark.timeout(300)
def test_hours_of_samples_leave_the_aggregators_memory_flat(tmp_path: Path) -> None:
    """Three simulated hours of 1 s samples of 65 series (the smoke profile's rate, the densest):
    between hour 1 and hour 3 the aggregator's Python memory grows by less than 0.5 MiB an hour.
    (Keeping every sample, as it once did, grew about 13 MiB an hour here.)"""
    settings = resolve_settings(DetectorsSection(profile="smoke"))
    origin = time.monotonic_ns()
    spec = AggregatorSpec(run_id="r", endpoint=f"ipc://{tmp_path}/t.sock", store_path=str(tmp_path / "run.sqlite"),
                          config_json="{}", started_wall="now", origin_ns=origin, run_s=3 * 3600.0, settings=settings)
    aggregator = Aggregator(spec)
    rng = np.random.default_rng(0)
    tracemalloc.start()
    try:
        marks = {}
        for second in range(3 * 3600 + 1):
            aggregator.handle(_resource_message(second, origin + second * 1_000_000_000, rng))
            if second % 600 == 0:  # judged now and then: the state under test is what samples leave
                aggregator.resources.evaluate(float(second))
                aggregator.store.commit()
            if second in (3600, 3 * 3600):
                marks[second] = tracemalloc.get_traced_memory()[0]
        growth_mib_h = (marks[3 * 3600] - marks[3600]) / MIB / 2
        assert growth_mib_h < 0.5, f"{growth_mib_h:.2f} MiB/h"
        assert len(aggregator.resources.leak) == 9 and len(aggregator.resources.discrete) == 20
    finally:
        tracemalloc.stop()
        aggregator.close()


def _window(start: float, model: str, p50: float) -> WindowStats:
    return WindowStats(start, 60.0, model, "identity", "grpc", 1000, 1000, 0, 0, 0, 0, 1000 / 60, p50, p50, p50,
                       p50, 3 * p50, 4 * p50)


def test_drift_from_kept_windows_names_the_drifting_model_and_the_common_mode() -> None:
    """Five hours of 1-min windows of four models (long profile, so most windows are not kept):
    one model slows by 1 %/min from hour 2 and is named alone; then the host slows every model by
    40 % and that is the drift of "all models", not of each."""
    watch = DriftWatch(resolve_settings(DetectorsSection(profile="long")))
    rng = np.random.default_rng(1)
    models = ["a", "b", "c", "d"]
    raised = []
    for minute in range(300):
        host = 1.4 if minute >= 240 else 1.0
        closed = [_window(minute * 60.0, m, 2.0 * host * rng.lognormal(0, 0.03)
                          * (1 + 0.01 * max(0, minute - 120) if m == "a" else 1.0)) for m in models]
        raised += watch.evaluate(closed, minute * 60.0 + 60)
    subjects = [v.subject for v in raised]
    assert subjects[0].startswith("a identity grpc") and 120 * 60 < raised[0].at_s <= 160 * 60
    assert any(s.startswith("all models") and 240 * 60 < v.at_s <= 275 * 60 for s, v in zip(subjects, raised))
    assert not [s for s in subjects if s[0] in "bcd"], subjects
    assert all(len(points.columns()[0]) <= 60 for points in watch.points.values())
    assert raised[0].evidence["windows"] > 60  # the count of all windows, not of the kept ones


def test_growth_alone_keeps_only_its_window_of_bins() -> None:
    """With LEAK off (the smoke profile), only GROWTH reads the bins, and only its window's: a
    day of 10 s bins is trimmed to at most two windows, whatever the run's length, and GROWTH
    still sees a growth that starts late."""
    from engine.detectors.leak import SMOKE, LeakDetector

    detector = LeakDetector("stub/m_0_0 (pid 1)", SMOKE, run_s=2 * 86400.0)
    window_bins = SMOKE.growth_window_s / SMOKE.bin_s
    most = 0
    for t in np.arange(0.0, 86400.0, 5.0):
        rss = 100 * MIB + (0.0 if t < 72000 else (t - 72000) * 400 * MIB / 3600)  # 400 MiB/h from 20 h on
        detector.add(float(t), rss, float(t * 10))
        if t % 600 == 0 or t >= 72000 and t % 30 == 0:
            detector.evaluate(float(t))
            most = max(most, len(detector._bins) if detector._bins is not None else 0)
    assert most <= 2 * window_bins + 2
    assert [v.kind for v in detector.raised] == ["GROWTH"] and detector.raised[0].at_s > 72000


def test_median_bins_forget_what_came_before_without_moving_later_bins() -> None:
    bins = MedianBins(10.0)
    for t in np.arange(0.0, 100.0, 1.0):
        bins.add(float(t), float(t), 0.0)
    bins.drop_before(45.0)
    t, v, _ = bins.arrays()
    assert t[0] == 54.5 and t[-1] == 94.5 and len(bins.floors()) == len(t) and bins.floors()[0] == 50.0
    bins.add(100.0, 100.0, 0.0)  # a new bin starts on the original boundaries
    assert bins.arrays()[0][-1] == 100.0 and bins.arrays()[0][-2] == 94.5
