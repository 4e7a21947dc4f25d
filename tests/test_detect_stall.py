"""The stall detector judges by progress, not age, and names the instance from the data alone."""

from __future__ import annotations

import numpy as np

from engine.detectors.errors import ErrorDetector
from engine.detectors.stall import (
    LONG,
    SMOKE,
    ModelTiming,
    StallDetector,
    StallParams,
    StallView,
    instance_model,
    start_bound_s,
    threshold_s,
)
from engine.window_stats import WindowStats


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


# The model of issue 16: no batching, two instances, so two sequence slots; a 7 s idle timeout.
NOBATCH = ModelTiming(0.0, 2, 0, sequence_idle_s=7.0)


def _backlog_view(now: float, starts: tuple[int, float], *, oldest: float | None = None, in_flight: int = 17,
                  stubs: dict | None = None, sequences: dict | None = None) -> StallView:
    """A sequence model "s" with `starts` = (STARTs waiting, start of the oldest) and, optionally,
    a request of a sequence that holds a slot (`oldest`). It answers all along."""
    return StallView(now, {"s": oldest} if oldest is not None else {}, {"s": in_flight, "other": 15},
                     {"s": now - 0.1}, sequences or {}, stubs or {}, {"s": 6.0}, {"s": starts})


def _holder_idle_stubs() -> dict:
    # One instance holds a sequence left without END (its stub idles until the server reaps it),
    # the other serves: the stub CPU of the run in issue 16, where the START was called a deadlock.
    return {"s_0_0": _cpu(True), "s_0_1": _cpu(False)}


def test_start_bound_counts_rounds_of_slot_releases() -> None:
    # T + ceil(waiting / slots) x (idle + 1 s + T): 6 waiting on 2 slots is 3 rounds.
    assert start_bound_s(SMOKE, NOBATCH, in_flight=17, waiting=6) == 5.0 + 3 * (7.0 + 1.0 + 5.0)
    assert start_bound_s(LONG, NOBATCH, in_flight=17, waiting=6) == 10.0 + 3 * 18.0
    assert start_bound_s(SMOKE, NOBATCH, in_flight=1, waiting=0) == 5.0 + 13.0  # itself: one round at most
    batched = ModelTiming(0.0, 2, 2, sequence_idle_s=7.0)  # 4 slots
    assert start_bound_s(SMOKE, batched, in_flight=5, waiting=5) == 5.0 + 2 * 13.0
    assert start_bound_s(SMOKE, ModelTiming(0.0, 1, 0), 1, 1) == 5.0 + (1.0 + 1.0 + 5.0)  # unknown: 1 s idle


def test_start_waiting_in_the_backlog_is_not_a_stall() -> None:
    # Issue 16: a START 10.4 s old behind 6 waiting STARTs on 2 slots, one holder idling its slot
    # away (its stub's CPU stands still). Before, the 10 s floor made it a STALL with deadlock 1.
    detector = StallDetector(LONG, {"s": NOBATCH})
    assert detector.evaluate(_backlog_view(30.4, (6, 20.0), stubs=_holder_idle_stubs())) == []
    # Still inside the bound (10 + 3 x 18 = 64 s) after 60 s of waiting, with the smoke floor too.
    assert detector.evaluate(_backlog_view(80.0, (6, 20.0), stubs=_holder_idle_stubs())) == []
    smoke = StallDetector(SMOKE, {"s": NOBATCH})
    assert smoke.evaluate(_backlog_view(60.0, (6, 20.0), stubs=_holder_idle_stubs())) == []  # 40 s < 44 s


def test_start_waiting_past_the_bound_is_a_stall_with_the_backlog_figures() -> None:
    detector = StallDetector(SMOKE, {"s": NOBATCH})
    [verdict] = detector.evaluate(_backlog_view(65.0, (6, 20.0), stubs=_holder_idle_stubs()))
    assert (verdict.kind, verdict.subject) == ("STALL", "s instance s_0_1")
    e = verdict.evidence
    assert (e["waiting_starts"], e["waiting_starts_now"], e["slots"], e["idle_timeout_s"]) == (6, 6, 2, 7.0)
    assert e["backlog_bound_s"] == e["threshold_s"] == 44.0 and verdict.size == 45.0 and e["in_flight"] == 17


def test_backlog_that_shrank_keeps_the_bound_of_those_that_were_ahead() -> None:
    # The START sent at 20 s had 5 ahead of it; by 50 s only it and one other wait. Those ahead
    # took their rounds: its bound stays that of the 6 (44 s), not that of the 2 now (18 s).
    detector = StallDetector(SMOKE, {"s": NOBATCH})
    stubs = _holder_idle_stubs()
    assert detector.evaluate(_backlog_view(21.0, (6, 20.0), stubs=stubs)) == []
    assert detector.evaluate(_backlog_view(50.0, (2, 20.0), stubs=stubs)) == []
    [verdict] = detector.evaluate(_backlog_view(64.5, (2, 20.0), stubs=stubs))
    assert verdict.evidence["waiting_starts"] == 6 and verdict.evidence["waiting_starts_now"] == 2
    # Once the backlog empties, what waited before says nothing about the next START: alone, it
    # gets one round (5 + 13 s).
    fresh = StallDetector(SMOKE, {"s": NOBATCH})
    fresh.evaluate(_backlog_view(21.0, (6, 20.0), stubs=stubs))
    fresh.evaluate(StallView(30.0, {}, {}, {}, {}))
    assert fresh.evaluate(_backlog_view(48.0, (1, 31.0), stubs=stubs)) == []
    [verdict] = fresh.evaluate(_backlog_view(49.5, (1, 31.0), stubs=stubs))
    assert verdict.evidence["waiting_starts"] == 1 and verdict.evidence["backlog_bound_s"] == 18.0


def test_a_hung_holder_keeps_the_per_request_threshold() -> None:
    # A step of a sequence that holds a slot does not wait for the backlog: past T it is a stall,
    # however many STARTs wait behind it.
    detector = StallDetector(SMOKE, {"s": NOBATCH})
    [verdict] = detector.evaluate(_backlog_view(27.0, (6, 20.0), oldest=20.0, stubs=_holder_idle_stubs()))
    assert verdict.subject == "s instance s_0_1" and verdict.evidence["threshold_s"] == 5.0
    assert "backlog_bound_s" not in verdict.evidence


def test_sequence_at_its_start_gets_the_backlog_bound_capped_by_the_deadline() -> None:
    waiting = {("s", "9"): (20.0, 0)}
    detector = StallDetector(SMOKE, {"s": NOBATCH})
    assert detector.evaluate(_backlog_view(50.0, (6, 20.0), sequences=waiting)) == []  # 30 s < 44 s
    [verdict] = detector.evaluate(_backlog_view(64.5, (6, 20.0), sequences=waiting))
    assert verdict.kind == "SEQ-STALL" and verdict.evidence["backlog_bound_s"] == 44.0
    assert verdict.evidence["waiting_starts"] == 6 and verdict.evidence["step"] == 0
    capped = StallDetector(StallParams(floor_s=5.0, sequence_deadline_s=25.0), {"s": NOBATCH})
    [verdict] = capped.evaluate(_backlog_view(45.5, (6, 20.0), sequences=waiting))
    assert verdict.kind == "SEQ-STALL" and verdict.evidence["threshold_s"] == 25.0
    # A sequence past its START keeps T + idle + 1 s (12 + 1 here), whatever waits in the backlog.
    later = StallDetector(SMOKE, {"s": NOBATCH})
    [verdict] = later.evaluate(_backlog_view(34.0, (6, 20.0), sequences={("s", "9"): (20.0, 3)}))
    assert verdict.evidence["threshold_s"] == 13.0


def test_threshold_uses_the_models_own_requests_in_flight() -> None:
    # Issue 17 item 5: a 2 s model with 4 of its own requests in flight among 32 run-wide gets
    # T = 3 x 2 s x ceil(4 / 2) = 12 s, not 96 s.
    detector = StallDetector(SMOKE, {"m": ModelTiming(2.0, 2, 0)})
    view = StallView(33.0, {"m": 20.0}, {"m": 4, "other": 28}, {"m": 32.9}, {},
                     {"m_0_0": _cpu(False), "m_0_1": _cpu(True)})
    [verdict] = detector.evaluate(view)
    assert verdict.evidence["threshold_s"] == 12.0 and verdict.evidence["in_flight"] == 4


def test_aggregator_view_counts_in_flight_and_starts_per_model(tmp_path) -> None:
    """The aggregator's view from two workers' heartbeats: per-model counts, STARTs apart."""
    import time

    from engine.aggregator.service import Aggregator, AggregatorSpec
    from engine.config._sections import DetectorsSection
    from engine.detectors.settings import resolve_settings
    from workers.telemetry import KIND_HEARTBEAT, Message

    settings = resolve_settings(DetectorsSection(profile="smoke"))
    origin = time.monotonic_ns() - 100_000_000_000
    spec = AggregatorSpec(run_id="r", endpoint=f"ipc://{tmp_path}/t.sock", store_path=str(tmp_path / "run.sqlite"),
                          config_json="{}", started_wall="now", origin_ns=origin, run_s=200.0, settings=settings,
                          timings={"m": ModelTiming(2.0, 2, 0), "s": NOBATCH})
    aggregator = Aggregator(spec)
    try:
        def at(run_s: float) -> int:
            return origin + int(run_s * 1e9)

        # worker-0: 2 requests of m, 14 of "busy" (another model), 3 STARTs of s; worker-1: 2 of m,
        # 14 of busy and 2 STARTs of s plus a step of a sequence holding a slot.
        for name, m_oldest, starts, s_oldest in (("worker-0", 90.0, [3, at(80.0)], None),
                                                 ("worker-1", 95.0, [2, at(70.0)], 97.0)):
            oldest = {"0": at(m_oldest), "1": at(99.0), **({"2": at(s_oldest)} if s_oldest else {})}
            body = {"time_ns": time.monotonic_ns(), "in_flight": 16 + 3, "models": ["m", "busy", "s"],
                    "oldest_by_model": oldest, "in_flight_by_model": {"0": 2, "1": 14, "2": 3},
                    "starts_by_model": {"2": starts}, "open_sequences": {}}
            aggregator.handle(Message(KIND_HEARTBEAT, name, 0, body))
        view = aggregator._stall_view(100.0)
        assert view.in_flight == {"m": 4, "busy": 28, "s": 6}
        assert view.oldest_in_flight_s["m"] == 90.0 and view.oldest_in_flight_s["s"] == 97.0
        assert view.starts["s"][0] == 5 and abs(view.starts["s"][1] - 70.0) < 1e-6
        assert threshold_s(SMOKE, spec.timings["m"], view.in_flight["m"]) == 12.0
    finally:
        aggregator.close()


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


def test_one_stall_is_one_verdict_updated_as_it_goes_on() -> None:
    """Issue 19: a precise STALL, then later evidence that alone would read 'instance unknown':
    no second verdict; the first is updated (longer), keeping the instances it named."""
    detector = StallDetector(SMOKE, {"m": ModelTiming(0.0, 2, 8)})
    idle = {"m_0_0": _cpu(False), "m_0_1": _cpu(False)}
    [verdict] = detector.evaluate(_view(30.0, 20.0, 21.0, idle))
    assert verdict.subject == "m instances m_0_0, m_0_1" and verdict.fault == "stall:m"
    assert detector.take_updates() == []
    busy = {"m_0_0": _cpu(True), "m_0_1": _cpu(True)}  # answers again now and then, one request still hangs
    assert detector.evaluate(_view(75.0, 20.0, 74.9, busy)) == []
    [update] = detector.take_updates()
    assert update.fault == verdict.fault and update.subject == verdict.subject
    assert update.since_s == 20.0 and update.size == 55.0 and update.evidence["deadlock"] == 1.0
    assert update.at_s == 30.0 and update.evidence["last_seen_s"] == 75.0  # said at 30 s, still so at 75 s
    assert detector.evaluate(_view(75.2, 20.0, 75.1, busy)) == [] and detector.take_updates() == []  # same


def test_a_stall_said_vaguely_first_is_named_when_the_evidence_comes() -> None:
    detector = StallDetector(SMOKE, {"m": ModelTiming(0.0, 2, 8)})
    busy = {"m_0_0": _cpu(True), "m_0_1": _cpu(True)}
    [verdict] = detector.evaluate(_view(30.0, 20.0, 29.9, busy))
    assert verdict.subject == "m instance unknown"
    idle = {"m_0_0": _cpu(False), "m_0_1": _cpu(False)}
    assert detector.evaluate(_view(40.0, 20.0, 31.0, idle)) == []  # nothing answered for 9 s > T
    [update] = detector.take_updates()
    assert update.subject == "m instances m_0_0, m_0_1" and update.size == 20.0


def test_the_holders_work_before_it_hung_is_not_counted() -> None:
    """The holder worked until just after the request began (the sequence's earlier steps, 50 ms
    of them), then blocked; its sibling, at a light load, used next to nothing. Counted from the
    sample before the request, the holder used more than its sibling, which a CI run named as
    the hung instance; from the request on, neither tells: "unknown" at 2 x T."""
    t = np.arange(0.3, 40.0, 1.0)
    holder = np.where(t >= 2.3, 0.19, 0.14)  # the samples of that run: +50 ms between 1.3 s and 2.3 s
    sibling = np.where(t >= 2.3, 0.16, 0.14)
    detector = StallDetector(SMOKE, {"m": ModelTiming(0.0, 2, 0)})
    stubs = {"m_0_0": (t, holder), "m_0_1": (t, sibling)}
    assert detector.evaluate(_view(7.0, 1.58, 6.9, stubs)) == []  # past T, no evidence yet: wait
    [verdict] = detector.evaluate(_view(11.7, 1.58, 11.6, stubs))
    assert verdict.subject == "m instance unknown", verdict.subject
