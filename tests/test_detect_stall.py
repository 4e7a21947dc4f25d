"""The stall detector judges by progress, not age, and names the instance from the data alone."""

from __future__ import annotations

import numpy as np

from engine.aggregator.window_stats import WindowStats
from engine.detectors.errors import ErrorDetector
from engine.detectors.stall import (
    SMOKE,
    ModelTiming,
    StallDetector,
    StallView,
    instance_model,
    threshold_s,
)


def _cpu(busy: bool, start: float = 0.0, end: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """CPU seconds of a stub: a light load (10 ms a second, as at ~15 requests/s) or blocked
    (one 10 ms tick every 5 s: the stub's own threads)."""
    t = np.arange(start, end + 0.5, 1.0)
    return t, (0.01 * (t - start) if busy else 1.25 + 0.01 * np.floor((t - start) / 5))


def _view(now: float, oldest: float | None, last_answer: float, stubs: dict, **kw) -> StallView:
    return StallView(now, {"m": oldest} if oldest is not None else {}, {"m": 4}, {"m": last_answer},
                     kw.get("sequences", {}), stubs)


def test_threshold_follows_the_models_own_delay() -> None:
    slow = ModelTiming(delay_s=2.0, instances=2, max_batch=0)
    assert threshold_s(SMOKE, slow, in_flight=1) == 6.0  # 3 x delay, above the 5 s floor
    assert threshold_s(SMOKE, slow, in_flight=5) == 18.0  # 5 in flight on 2 instances: 3 deep
    assert threshold_s(SMOKE, ModelTiming(0.0, 2, 8), in_flight=100) == 5.0  # the floor
    assert threshold_s(SMOKE, ModelTiming(0.0, 2, 8), in_flight=1, p999_s=2.0) == 10.0


def test_slow_model_is_not_a_stall() -> None:
    detector = StallDetector(SMOKE, {"m": ModelTiming(2.0, 2, 0)})
    # A request 5.5 s old on a model with a 2 s delay: within 3 x delay, nothing is raised.
    view = _view(30.0, 24.5, 29.0, {"m_0_0": _cpu(True), "m_0_1": _cpu(True)})
    assert detector.evaluate(view) == []


def test_one_hung_instance_is_named_while_its_sibling_serves() -> None:
    detector = StallDetector(SMOKE, {"m": ModelTiming(0.0, 2, 8)})
    stubs = {"m_0_0": _cpu(False), "m_0_1": _cpu(True), "other_0_0": _cpu(False)}
    assert detector.evaluate(_view(24.0, 20.0, 23.9, stubs)) == []  # 4 s: under the 5 s floor
    [verdict] = detector.evaluate(_view(27.0, 20.0, 26.9, stubs))
    assert (verdict.kind, verdict.subject) == ("STALL", "m instance m_0_0")
    assert verdict.since_s == 20.0 and verdict.size == 7.0 and verdict.evidence["deadlock"] == 1.0
    assert detector.evaluate(_view(28.0, 20.0, 27.9, stubs)) == []  # raised once


def test_whole_model_stall_when_nothing_answers() -> None:
    detector = StallDetector(SMOKE, {"m": ModelTiming(0.0, 2, 8)})
    stubs = {"m_0_0": _cpu(False), "m_0_1": _cpu(False)}
    [verdict] = detector.evaluate(_view(30.0, 20.0, 21.0, stubs))
    assert verdict.subject == "m instances m_0_0, m_0_1" and verdict.evidence["no_answer_for_s"] == 9.0


def test_ambiguous_instance_is_said_unknown_not_guessed() -> None:
    detector = StallDetector(SMOKE, {"m": ModelTiming(0.0, 2, 8)})
    busy = {"m_0_0": _cpu(True), "m_0_1": _cpu(True)}
    assert detector.evaluate(_view(27.0, 20.0, 26.9, busy)) == []  # waits up to 2 x T for evidence
    [verdict] = detector.evaluate(_view(30.0, 20.0, 29.9, busy))
    assert verdict.subject == "m instance unknown"


def test_sequence_stall_allows_the_idle_timeout_and_is_capped_by_the_deadline() -> None:
    timing = {"s": ModelTiming(0.0, 1, 2, sequence_idle_s=2.0)}
    detector = StallDetector(SMOKE, timing)
    view = StallView(20.0, {}, {}, {}, {("s", "17"): (13.0, 4)})  # 7 s: under 5 + 2 + 1
    assert detector.evaluate(view) == []
    [verdict] = detector.evaluate(StallView(22.0, {}, {}, {}, {("s", "17"): (13.0, 4)}))
    assert verdict.kind == "SEQ-STALL" and verdict.subject == "s sequence 17" and verdict.evidence["step"] == 4
    capped = StallDetector(SMOKE.__class__(floor_s=5.0, sequence_deadline_s=6.0), timing)
    assert capped.evaluate(StallView(20.0, {}, {}, {}, {("s", "17"): (13.0, 4)}))


def test_instance_names() -> None:
    assert instance_model("hang_fp32_0_1") == "hang_fp32"
    assert instance_model("plain") == "plain"


def _window(**kw) -> WindowStats:
    base = dict(start_s=10.0, length_s=10.0, model="m", scenario="identity", protocol="grpc", requests=100, ok=100,
                errors=0, wrong=0, expected_errors=0, missing_errors=0, throughput=10.0, mean_ms=1.0, p50_ms=1.0,
                p90_ms=1.0, p95_ms=1.0, p99_ms=1.0, max_ms=1.0)
    return WindowStats(**{**base, **kw})


def test_errors_and_wrong_answers_once_each_expected_errors_never() -> None:
    detector = ErrorDetector()
    assert detector.evaluate([_window(expected_errors=30, scenario="timeout")], 20.0) == []
    raised = detector.evaluate([_window(wrong=2), _window(errors=1, scenario="sequence_valid")], 20.0,
                               {"sequence_valid": ["StatusCode.UNAVAILABLE: boom"]})
    assert {(v.detector, v.kind, v.subject) for v in raised} == {
        ("wrong_answers", "WRONG", "m in identity over grpc"), ("errors", "ERRORS", "m in sequence_valid over grpc")}
    assert next(v for v in raised if v.kind == "ERRORS").samples == ("StatusCode.UNAVAILABLE: boom",)
    assert detector.evaluate([_window(wrong=5, start_s=20.0)], 30.0) == []
    only_errors = ErrorDetector(enabled=("errors",))
    assert [v.kind for v in only_errors.evaluate([_window(wrong=1, missing_errors=1)], 1.0)] == ["MISSING-ERROR"]
