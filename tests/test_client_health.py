"""When the engine is its own bottleneck (issue 19): windows where a worker used a core's worth of
CPU, or its event loop or schedule ran late, are marked, kept away from drift, and shown in the
report; the same latency rise with a healthy load generator is a DRIFT."""

from __future__ import annotations

from pathlib import Path

import zmq

from engine.aggregator.client_health import BOUND, FREE, ClientHealth
from engine.aggregator.service import Aggregator, AggregatorSpec
from engine.config._sections import DetectorsSection
from engine.detectors.settings import resolve_settings
from workers.telemetry import KIND_BATCH, KIND_HEARTBEAT, STATUS_OK, Heartbeat, RecordBuffer, pack, unpack


def _beat(body: dict) -> Heartbeat:
    return Heartbeat.from_body(body)


def test_a_worker_at_a_full_core_or_a_late_loop_is_client_bound_until_it_recovers() -> None:
    health = ClientHealth()
    assert health.beat("worker-0", 10.0, _beat({"cpu_s": 5.0})) is None  # the first beat: nothing to compare
    assert health.beat("worker-0", 11.0, _beat({"cpu_s": 5.5})) is None  # half a core
    what, text = health.beat("worker-0", 12.0, _beat({"cpu_s": 6.47}))
    assert what == BOUND and "97 % of a core" in text
    assert health.bound(11.5, 12.5) and not health.bound(5.0, 11.0)
    assert health.beat("worker-0", 13.0, _beat({"cpu_s": 6.9, "loop_lag_ns": 250_000_000})) is None  # still bound
    what, _ = health.beat("worker-0", 14.0, _beat({"cpu_s": 7.2}))
    assert what == FREE and health.spans[-1] == (11.0, 14.0)
    assert not health.bound(14.0, 20.0)


class _Clock:
    def __init__(self) -> None:
        self.ns = 10**12

    def __call__(self) -> int:
        return self.ns


def _drift_run(tmp_path: Path, saturated: bool) -> tuple[list[str], dict]:
    """30 one-second windows of one model, its latency doubling from window 15; the worker uses
    a full core from window 14 on when `saturated`."""
    clock = _Clock()
    settings = resolve_settings(DetectorsSection(profile="smoke", window=1.0))
    spec = AggregatorSpec(run_id="r", endpoint=f"inproc://health-{saturated}", store_path=str(tmp_path / "run.sqlite"),
                          config_json="{}", started_wall="now", origin_ns=clock.ns, run_s=60.0, settings=settings)
    context = zmq.Context()
    aggregator = Aggregator(spec, context, clock=clock)
    buffer = RecordBuffer(("m",), ("identity",), "grpc")
    cpu = 0.0
    try:
        for second in range(40):
            latency_ns = 2_000_000 if second < 15 else 4_000_000
            for k in range(100):
                buffer.add(clock.ns + k * 5_000_000, latency_ns + k * 1000, 0, 0, STATUS_OK)
            aggregator.handle(unpack(pack(KIND_BATCH, "worker-0", 2 * second, buffer.take_body())))
            clock.ns += 1_000_000_000
            cpu += 0.98 if saturated and second >= 14 else 0.3
            body = {"time_ns": clock.ns, "in_flight": 0, "oldest_in_flight_ns": 0, "open_sequences": {},
                    "records_sent": 0, "records_dropped": 0, "plans": {}, "models": ["m"], "cpu_s": cpu}
            aggregator.handle(unpack(pack(KIND_HEARTBEAT, "worker-0", 2 * second + 1, body)))
            aggregator.tick()
        kinds = [r.verdict.kind for r in aggregator.store.verdicts()]
        status = aggregator.store.status()
        events = [e.what for e in aggregator.store.events()]
    finally:
        aggregator.close()
        context.term()
    return kinds, {"status": status, "events": events}


def test_a_latency_rise_while_the_worker_is_saturated_is_not_the_servers_drift(tmp_path: Path) -> None:
    kinds, seen = _drift_run(tmp_path, saturated=True)
    assert "DRIFT" not in kinds
    assert BOUND in seen["events"] and seen["status"].client_bound_windows > 10


def test_the_same_rise_with_a_healthy_worker_is_a_drift(tmp_path: Path) -> None:
    kinds, seen = _drift_run(tmp_path, saturated=False)
    assert "DRIFT" in kinds and BOUND not in seen["events"]
