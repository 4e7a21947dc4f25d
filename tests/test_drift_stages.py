"""Where a drift's added time went (issue 19): the server's queue, its compute, or outside the
server, from the model's stage metrics over the drift's own baseline and current spans."""

from __future__ import annotations

import numpy as np

from engine.aggregator.drift_watch import DriftWatch
from engine.aggregator.stages import FIELDS, StageHistory, StageWatch
from engine.config._sections import DetectorsSection
from engine.detectors.settings import resolve_settings
from engine.window_stats import WindowStats

WINDOW_S = 10.0
ONSET_S = 400.0


def _window(start: float, p50_ms: float) -> WindowStats:
    return WindowStats(start, WINDOW_S, "m", "identity", "grpc", 200, 200, 0, 0, 0, 0, 20.0, p50_ms, p50_ms,
                       p50_ms * 1.2, p50_ms * 1.3, p50_ms * 1.5, p50_ms * 2, b"")


def _metrics(at: float, queue_ms_per_request: float, compute_ms_per_request: float) -> dict[str, float]:
    """Cumulative metrics at run second `at` for 20 requests/s whose queue time grew at ONSET_S
    from 1 ms by `queue_ms_per_request`, and compute by `compute_ms_per_request`."""
    requests = 20.0 * at
    late = 20.0 * max(0.0, at - ONSET_S)
    return {"model/m/success": requests, "model/m/queue_us": 1000.0 * requests + 1000.0 * queue_ms_per_request * late,
            "model/m/compute_input_us": 50.0 * requests, "model/m/compute_output_us": 50.0 * requests,
            "model/m/compute_infer_us": 2000.0 * requests + 1000.0 * compute_ms_per_request * late,
            "model/other/success": requests}  # a model without its stage figures is left out


def _drift(queue_ms: float, compute_ms: float, client_ms: float) -> dict:
    """A run of smoke-profile windows whose p50 rises by `client_ms` from ONSET_S while the stages
    add `queue_ms` and `compute_ms`; the DRIFT verdict's evidence."""
    settings = resolve_settings(DetectorsSection(profile="smoke", window=WINDOW_S))
    watch = DriftWatch(settings)
    d = settings.drift
    stages = StageWatch(head_s=(d.warmup_windows + d.baseline_windows + 2) * WINDOW_S + settings.leak.warmup_s,
                        tail_s=(d.current_windows + 2) * WINDOW_S)
    rng = np.random.default_rng(3)
    for k in range(80):
        start = k * WINDOW_S
        for second in np.arange(start, start + WINDOW_S, 1.0):
            stages.add(float(second), _metrics(float(second), queue_ms, compute_ms))
        p50 = 4.0 * np.exp(rng.normal(0.0, 0.03)) + (client_ms if start >= ONSET_S else 0.0)
        verdicts = watch.evaluate([_window(start, p50)], start + WINDOW_S + 2.0, stages)
        if verdicts:
            return verdicts[0].evidence | {"text": verdicts[0].describe()}
    raise AssertionError("no drift raised")


def test_a_drift_of_the_servers_queue_is_said_to_be_the_queue() -> None:
    evidence = _drift(queue_ms=3.0, compute_ms=0.0, client_ms=3.0)
    assert abs(evidence["added_queue_ms"] - 3.0) < 0.3 and abs(evidence["added_compute_ms"]) < 0.1
    assert abs(evidence["added_outside_ms"]) < 0.6
    assert "server queue +3" in evidence["text"]


def test_a_drift_outside_the_server_is_said_to_be_outside() -> None:
    """The client sees +3 ms; the server's stages did not move: the time went elsewhere."""
    evidence = _drift(queue_ms=0.0, compute_ms=0.0, client_ms=3.0)
    assert abs(evidence["added_queue_ms"]) < 0.1 and abs(evidence["added_compute_ms"]) < 0.1
    assert abs(evidence["added_outside_ms"] - 3.0) < 0.6


def test_a_compute_drift_is_the_servers_compute() -> None:
    evidence = _drift(queue_ms=0.0, compute_ms=3.0, client_ms=3.0)
    assert abs(evidence["added_compute_ms"] - 3.0) < 0.3 and abs(evidence["added_queue_ms"]) < 0.1


def test_stage_history_keeps_its_head_and_its_latest_only() -> None:
    history = StageHistory(head_s=100.0, tail_s=50.0)
    for at in range(0, 1000):
        history.add(float(at), tuple(float(at) for _ in FIELDS))
    assert len(history.head) == 101 and len(history.tail) <= 52
    assert history.mean_ms(0.0, 100.0) is not None and history.mean_ms(960.0, 999.0) is not None


def test_stage_history_holds_no_python_object_per_sample() -> None:
    """The long profile keeps ~70 minutes of 5 s samples per model: as tuples they were eight
    objects each, which grew the aggregator's RssAnon by ~2 MiB over a soak's first hour."""
    import sys

    history = StageHistory(head_s=2400.0, tail_s=1920.0)
    values = tuple(float(i) for i in range(len(FIELDS)))
    history.add(0.0, values)
    before = sys.getallocatedblocks()
    for at in range(5, 5 * 2000, 5):
        history.add(float(at), values)
    assert sys.getallocatedblocks() - before < 50
    assert len(history.head) == 481 and len(history.tail) <= 386
