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
        assert status.requests == sent and status.lost_messages == 0
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
        assert sum(w.requests for w in store.windows()) == 1 and store.status().bad_messages == 1
    finally:
        store.close()


class _Clock:
    """A monotonic clock that moves only when told to (the aggregator's injected clock)."""

    def __init__(self) -> None:
        self.ns = 10**12

    def __call__(self) -> int:
        return self.ns


def test_the_live_p99_is_the_last_windows_not_the_runs_worst(tmp_path: Path) -> None:
    """One slow window must not hold the live p99 for the rest of the run: the live figures say
    the last closed windows' p99, and the worst of the last few beside it."""
    import zmq

    from engine.aggregator.service import RECENT_WINDOWS, Aggregator
    from workers.telemetry import KIND_BATCH, pack, unpack

    clock = _Clock()
    settings = resolve_settings(DetectorsSection(profile="smoke", window=1.0))
    spec = AggregatorSpec(run_id="r", endpoint="inproc://live-p99", store_path=str(tmp_path / "run.sqlite"),
                          config_json="{}", started_wall="now", origin_ns=clock.ns, run_s=60.0, settings=settings)
    context = zmq.Context()
    aggregator = Aggregator(spec, context, clock=clock)
    buffer = RecordBuffer(("m",), ("identity",), "grpc")
    p99s = []
    try:
        for second in range(12):
            latency_ms = 300.0 if second == 2 else 2.0  # one slow window, then fast ones
            for k in range(50):
                buffer.add(clock.ns + k * 10_000_000, int(latency_ms * 1e6), 0, 0, STATUS_OK)
            aggregator.handle(unpack(pack(KIND_BATCH, "worker-0", second, buffer.take_body())))
            clock.ns += 1_000_000_000
            aggregator.tick()
            p99s.append((aggregator.store.status().p99_ms, aggregator.store.status().p99_recent_ms))
    finally:
        aggregator.close()
        context.term()
    slow = next(i for i, (last, _) in enumerate(p99s) if last > 200)
    assert p99s[slow + 1][0] < 10  # the next window is fast again, and so is the live p99
    assert p99s[slow + 1][1] > 200  # ...while the recent worst still shows the slow one
    assert p99s[slow + RECENT_WINDOWS][1] < 10  # until it is older than the last few windows


def test_a_stall_is_one_verdict_in_the_store_updated_as_it_lasts(tmp_path: Path) -> None:
    """Issue 19, one fault = one verdict: a request that hangs for a minute gives one STALL row,
    whose duration follows the stall, not a second row when the evidence changes."""
    import zmq

    from engine.aggregator.service import Aggregator
    from workers.telemetry import KIND_HEARTBEAT, pack, unpack

    clock = _Clock()
    settings = resolve_settings(DetectorsSection(profile="smoke", window=1.0, stall_floor=2.0))
    spec = AggregatorSpec(run_id="r", endpoint="inproc://one-stall", store_path=str(tmp_path / "run.sqlite"),
                          config_json="{}", started_wall="now", origin_ns=clock.ns, run_s=120.0, settings=settings,
                          timings={"m": ModelTiming(0.0, 2, 0)})
    context = zmq.Context()
    aggregator = Aggregator(spec, context, clock=clock)
    hung_since = clock.ns
    try:
        for second in range(60):
            clock.ns += 1_000_000_000
            body = {"time_ns": clock.ns, "in_flight": 1, "oldest_in_flight_ns": hung_since, "open_sequences": {},
                    "records_sent": 0, "records_dropped": 0, "plans": {}, "oldest_by_model": {"0": hung_since},
                    "in_flight_by_model": {"0": 1}, "starts_by_model": {}, "models": ["m"]}
            aggregator.handle(unpack(pack(KIND_HEARTBEAT, "worker-0", second, body)))
            aggregator.tick()
        stalls = [r.verdict for r in aggregator.store.verdicts() if r.verdict.kind == "STALL"]
    finally:
        aggregator.close()
        context.term()
    assert len(stalls) == 1, [v.describe() for v in stalls]
    assert stalls[0].at_s < 10 and stalls[0].size >= 59  # said within seconds, and as long as it lasted
    assert stalls[0].evidence["last_seen_s"] >= 59


def test_errors_of_a_stalled_model_point_at_its_stall(tmp_path: Path) -> None:
    """Issue 19, one fault = one verdict: the requests that time out inside a stall give an
    ERRORS verdict that says it follows the STALL (and fails nothing by itself); another model's
    errors stay a failing verdict of their own."""
    import zmq

    from engine.aggregator.service import Aggregator
    from workers.telemetry import KIND_BATCH, KIND_HEARTBEAT, STATUS_ERROR, pack, unpack

    clock = _Clock()
    settings = resolve_settings(DetectorsSection(profile="smoke", window=1.0, stall_floor=2.0))
    spec = AggregatorSpec(run_id="r", endpoint="inproc://stall-errors", store_path=str(tmp_path / "run.sqlite"),
                          config_json="{}", started_wall="now", origin_ns=clock.ns, run_s=60.0, settings=settings,
                          timings={"m": ModelTiming(0.0, 2, 0), "n": ModelTiming(0.0, 2, 0)})
    context = zmq.Context()
    aggregator = Aggregator(spec, context, clock=clock)
    hung_since = clock.ns
    buffer = RecordBuffer(("m", "n"), ("identity",), "grpc")
    try:
        for second in range(20):
            clock.ns += 1_000_000_000
            if second == 10:  # m's hung requests time out; n fails on its own
                buffer.add(hung_since, clock.ns - hung_since - 500_000_000, 0, 0, STATUS_ERROR)
                buffer.add(clock.ns - 600_000_000, 1_000_000, 1, 0, STATUS_ERROR)
                aggregator.handle(unpack(pack(KIND_BATCH, "worker-0", 100 + second, buffer.take_body())))
            body = {"time_ns": clock.ns, "in_flight": 1, "oldest_in_flight_ns": hung_since, "open_sequences": {},
                    "records_sent": 0, "records_dropped": 0, "plans": {}, "oldest_by_model": {"0": hung_since},
                    "in_flight_by_model": {"0": 1}, "starts_by_model": {}, "models": ["m", "n"]}
            aggregator.handle(unpack(pack(KIND_HEARTBEAT, "worker-0", second, body)))
            aggregator.tick()
        rows = aggregator.store.verdicts()
    finally:
        aggregator.close()
        context.term()
    [stall] = [r for r in rows if r.verdict.kind == "STALL"]
    errors = {r.verdict.subject.split(" ", 1)[0]: r for r in rows if r.verdict.kind == "ERRORS"}
    assert errors["m"].state == "info" and errors["m"].verdict.evidence["stall_verdict_id"] == stall.id
    assert f"follows the STALL of verdict #{stall.id}" in errors["m"].verdict.describe()
    assert errors["n"].state == "open" and "stall_verdict_id" not in errors["n"].verdict.evidence


def test_answer_check_counts_reach_the_report_and_survive_an_aggregator_restart(tmp_path: Path) -> None:
    """[workers] validate = "pages" or "fraction": the workers' cumulative counts (compared, passed
    on sampled pages alone, not compared) come with their heartbeats, are summed over the workers
    into the live figures, read back by a restarted aggregator, and said in one line of the report."""
    import zmq

    from engine.aggregator.service import Aggregator
    from engine.report.build import answer_check_line, build_report
    from engine.report.text import render_summary
    from workers.telemetry import KIND_HEARTBEAT, pack, unpack

    clock = _Clock()
    settings = resolve_settings(DetectorsSection(profile="smoke", window=1.0))
    spec = AggregatorSpec(run_id="r", endpoint="inproc://answer-counts", store_path=str(tmp_path / "run.sqlite"),
                          config_json="{}", started_wall="now", origin_ns=clock.ns, run_s=60.0, settings=settings)

    def beat(aggregator: Aggregator, worker: str, seq: int, answers: tuple[int, int, int]) -> None:
        body = {"time_ns": clock.ns, "in_flight": 0, "models": ["m"], "answers": list(answers)}
        aggregator.handle(unpack(pack(KIND_HEARTBEAT, worker, seq, body)))

    context = zmq.Context()
    try:
        aggregator = Aggregator(spec, context, clock=clock)
        try:
            for second in range(3):
                clock.ns += 1_000_000_000
                beat(aggregator, "worker-0", second, (100 * (second + 1), 60 * (second + 1), 0))
                beat(aggregator, "worker-1", second, (10 * (second + 1), 0, 5 * (second + 1)))
                aggregator.tick()
            assert aggregator.store.status().answers == [330, 180, 15]  # the last totals, not a sum of beats
        finally:
            aggregator.close()
        again = Aggregator(spec, context, clock=clock)  # resumes from the store
        try:
            clock.ns += 1_000_000_000
            beat(again, "worker-1", 3, (40, 0, 20))  # worker-0 has ended: its totals stay
            again.tick()
            store = again.store
            assert store.status().answers == [340, 180, 20]
            report = build_report(store)
        finally:
            again.close()
    finally:
        context.term()
    line = "answers ([workers] validate): 160 compared in full, 180 passed on sampled pages alone, 20 not compared"
    assert answer_check_line(report.figures) == line
    assert line in render_summary(report)
    assert answer_check_line({"answers": [500, 0, 0]}) == "" and answer_check_line({}) == ""  # "all": nothing to say
