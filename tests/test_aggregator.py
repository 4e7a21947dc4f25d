"""The aggregator process over real ZeroMQ and a real store: nothing a worker sent is lost, the
windows, totals, events and verdicts land in the store, and SIGTERM drains before it exits."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from engine.aggregator.prometheus import PrometheusEndpoint
from engine.aggregator.service import AggregatorSpec, start_aggregator
from engine.config._sections import DetectorsSection
from engine.detectors.settings import resolve_settings
from engine.detectors.stall import ModelTiming
from engine.store import RunStore
from workers.sender import TelemetrySender
from workers.telemetry import STATUS_ERROR, STATUS_OK, Heartbeat, RecordBuffer


def _started(process, store: Path) -> None:
    """The aggregator is up when its store exists (as the coordinator waits for it too)."""
    deadline = time.monotonic() + 60
    while not store.exists() and process.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.exists(), f"aggregator exit status {process.exitcode}"


def test_records_heartbeats_and_events_reach_the_store(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/telemetry.sock"
    origin = time.monotonic_ns()
    settings = resolve_settings(DetectorsSection(profile="smoke", window=0.5, stall_floor=1.0))
    spec = AggregatorSpec(run_id="r", endpoint=endpoint, store_path=str(tmp_path / "run.sqlite"), config_json="{}",
                          started_wall="now", origin_ns=origin, run_s=10.0, settings=settings,
                          timings={"m": ModelTiming(0.0, 1, 0)})
    process = start_aggregator(spec)
    _started(process, tmp_path / "run.sqlite")
    sender = TelemetrySender(endpoint, "worker-0", RecordBuffer(("m", "n"), ("identity",), "grpc"))
    try:
        sent = 0
        for i in range(3000):  # across several windows
            now = time.monotonic_ns()
            sender.record(now - 1_000_000, 1_000_000, i % 2, 0, STATUS_ERROR if i == 1501 else STATUS_OK)
            sent += 1
            if i % 500 == 0:
                time.sleep(0.2)
        sender.event("scenario_failed", "n", "identity", "n step 0: StatusCode.INTERNAL: boom")
        # A request to m in flight for 3 s, and m answers nothing more: the whole model stalled.
        hung_since = time.monotonic_ns() - 3_000_000_000
        sender.heartbeat(Heartbeat(time_ns=time.monotonic_ns(), in_flight=1, oldest_in_flight_ns=hung_since,
                                   open_sequences={}, records_sent=sent, records_dropped=0,
                                   plans={"identity": (sent, 1, sent)}, oldest_by_model={0: hung_since},
                                   models=("m", "n")))
        sender.flush()
        time.sleep(2.5)
        process.terminate()
        process.join(30)
        assert process.exitcode == 0
    finally:
        sender.close()
        if process.is_alive():
            process.kill()
    store = RunStore.open(tmp_path / "run.sqlite")
    try:
        windows = store.windows()
        assert sum(w.requests for w in windows) == sent  # every record, in closed windows
        assert {w.model for w in windows} == {"m", "n"} and len({w.start_s for w in windows}) >= 2
        assert sum(w.errors for w in windows) == 1
        assert store.totals() == [("identity", sent, 1, sent)]
        assert [e.what for e in store.events()] == ["scenario_failed"]
        kinds = {(r.verdict.detector, r.verdict.kind, r.verdict.subject) for r in store.verdicts()}
        assert ("errors", "ERRORS", "n in identity over grpc") in kinds
        assert ("stall", "STALL", "m") in kinds
        assert not any(k[2].startswith("n") for k in kinds if k[0] == "stall")
        error = next(r.verdict for r in store.verdicts() if r.verdict.kind == "ERRORS")
        assert error.samples == ("n step 0: StatusCode.INTERNAL: boom",)
        status = store.status()
        assert status["requests"] == sent and status["lost_messages"] == 0
    finally:
        store.close()


def test_prometheus_endpoint_serves_the_figures_on_loopback() -> None:
    endpoint = PrometheusEndpoint(0)
    try:
        endpoint.update({"engine_requests_total": ("records", {(): 12.0}),
                         "engine_p99_ms": ("p99", {(("model", 'a"b\\c'),): 1.5})})
        text = urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=5).read().decode()
        assert "# TYPE engine_requests_total gauge\nengine_requests_total 12.0\n" in text
        assert 'engine_p99_ms{model="a\\"b\\\\c"} 1.5' in text
        assert endpoint._server.server_address[0] == "127.0.0.1"
    finally:
        endpoint.close()


def test_a_malformed_message_is_recorded_and_the_aggregator_goes_on(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/telemetry.sock"
    settings = resolve_settings(DetectorsSection(profile="smoke", window=0.5))
    spec = AggregatorSpec(run_id="r", endpoint=endpoint, store_path=str(tmp_path / "run.sqlite"), config_json="{}",
                          started_wall="now", origin_ns=time.monotonic_ns(), run_s=10.0, settings=settings)
    process = start_aggregator(spec)
    _started(process, tmp_path / "run.sqlite")
    sender = TelemetrySender(endpoint, "worker-0", RecordBuffer(("m",), ("identity",), "grpc"))
    try:
        sender.send("batch", {"protocol": "grpc", "models": ["m"], "scenarios": ["identity"], "count": 3,
                              "columns": {}})  # no columns: cannot be decoded
        now = time.monotonic_ns()
        sender.record(now - 1000, 1000, 0, 0, STATUS_OK)
        sender.flush()
        time.sleep(2.0)
        process.terminate()
        process.join(30)
        assert process.exitcode == 0
    finally:
        sender.close()
        if process.is_alive():
            process.kill()
    store = RunStore.open(tmp_path / "run.sqlite")
    try:
        assert [e.what for e in store.events()] == ["bad_message"]
        assert sum(w.requests for w in store.windows()) == 1 and store.status()["bad_messages"] == 1
    finally:
        store.close()
