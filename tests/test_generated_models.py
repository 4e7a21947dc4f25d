"""Generated models on the real bundled tritonserver: each answers as its spec promises, and
each faulty model shows its fault and publishes its ground truth."""

from __future__ import annotations

import json
import queue
import re
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from engine.server._health import model_ready
from model_repo_gen import FaultOptions, RepoOptions, generate_repository
from model_repo_gen.options import HEALTHY_MODELS
from tests.server_helpers import RunningServer, serve_repository

pytestmark = pytest.mark.timeout(240)

IDLE_S = 1.0  # sequence idle timeout of the test models
HEALTHY = RepoOptions(models=HEALTHY_MODELS + ("sequence_noexpire_int32",), instance_count=2,
                      zero_delay_ms=200, slow_zero_delay_ms=400, sequence_idle_timeout=IDLE_S)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("healthy")
    generate_repository(root / "repo", HEALTHY)
    with serve_repository(root / "repo", root / "work") as running:
        yield running


@pytest.fixture(scope="module")
def grpc(server: RunningServer):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


def _metric(server: RunningServer, name: str, model: str, instance: str | None = None) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    total, found = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name + "{") or f'model="{model}"' not in line:
            continue
        if instance is None or f'instance="{instance}"' in line:
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"{name} for {model} not on the metrics endpoint"
    return total


def _input(module, name: str, data: np.ndarray, datatype: str):
    tensor = module.InferInput(name, list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return tensor


def _seq_step(client, model: str, value: int, seq_id, *, start=False, end=False, batched=True, dtype=np.int32,
              datatype="INT32") -> float:
    data = np.array([[value]] if batched else [value], dtype=dtype)
    result = client.infer(model, [_input(grpcclient, "INPUT", data, datatype)], sequence_id=seq_id,
                          sequence_start=start, sequence_end=end)
    return result.as_numpy("OUTPUT").reshape(-1)[0]


def test_every_healthy_model_loads_ready(server: RunningServer) -> None:
    for name in HEALTHY.models:
        assert model_ready(server.http_url, name), name


@pytest.mark.parametrize("model,datatype", [
    ("identity_fp32", "FP32"), ("identity_int32", "INT32"), ("identity_bytes", "BYTES"),
    ("identity_nobatch_fp32", "FP32"), ("identity_nobatch_int32", "INT32"), ("identity_nobatch_bytes", "BYTES"),
])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_identity_returns_its_input(server: RunningServer, model: str, datatype: str, protocol: str) -> None:
    if datatype == "BYTES":
        data = np.array([b"\x00bin", "ünïcode".encode(), b"", b"x" * 300], dtype=np.object_)
    else:
        data = np.arange(-5, 27).astype(np.float32 if datatype == "FP32" else np.int32) * 3
    if "nobatch" not in model:
        data = data.reshape(2, -1)  # a batch of two rows
    module = grpcclient if protocol == "grpc" else httpclient
    client = module.InferenceServerClient(server.grpc_url if protocol == "grpc" else server.http_url)
    try:
        got = client.infer(model, [_input(module, "INPUT0", data, datatype)]).as_numpy("OUTPUT0")
    finally:
        client.close()
    assert got.shape == data.shape
    if datatype == "BYTES":
        assert [bytes(x) for x in got.reshape(-1)] == list(data.reshape(-1))
    else:
        assert np.array_equal(got, data)


def test_zero_model_answers_zeros_after_its_delay(grpc) -> None:
    data = np.ones(64, np.float32)
    for model, delay in (("zero_fp32", 0.2), ("zero_slow_fp32", 0.4)):
        started = time.monotonic()
        got = grpc.infer(model, [_input(grpcclient, "INPUT0", data, "FP32")]).as_numpy("OUTPUT0")
        took = time.monotonic() - started
        assert np.array_equal(got, np.zeros_like(data))
        assert delay <= took < delay + 1.0, (model, took)


@pytest.mark.parametrize("model,batched,dtype,datatype,string_ids", [
    ("sequence_int32", True, np.int32, "INT32", False),
    ("sequence_fp32", True, np.float32, "FP32", False),
    ("sequence_nobatch_int32", False, np.int32, "INT32", False),
    ("sequence_nobatch_fp32", False, np.float32, "FP32", False),
    ("sequence_string_int32", True, np.int32, "INT32", True),
])
def test_interleaved_sequences_accumulate_without_cross_talk(grpc, model, batched, dtype, datatype, string_ids) -> None:
    rng = np.random.default_rng(7)
    # As many sequences as the model has slots (instances x batch): one more would wait in the
    # backlog until a holder idles out, and that holder would then be timed out (Triton's rule).
    slots = HEALTHY.instance_count * (HEALTHY.sequence_max_batch_size if batched else 1)
    ids = [f"s-{model}-{i}" for i in range(slots)] if string_ids else [1000 + i for i in range(slots)]
    plans = {seq: rng.integers(0, 1 << 20, size=6).astype(dtype) for seq in ids}
    sums = {seq: dtype(0) for seq in ids}
    for step in range(6):  # round robin: every step of every sequence interleaves with the others
        for seq in ids:
            value = plans[seq][step]
            sums[seq] = dtype(sums[seq] + value)
            got = _seq_step(grpc, model, value, seq, start=step == 0, end=step == 5, batched=batched, dtype=dtype,
                            datatype=datatype)
            assert got == sums[seq], (model, seq, step)


def test_first_request_without_start_is_refused(grpc) -> None:
    with pytest.raises(InferenceServerException, match="must specify the START flag"):
        _seq_step(grpc, "sequence_int32", 5, 424242)


def test_idle_sequence_is_timed_out_and_its_state_dropped(server: RunningServer, grpc) -> None:
    for model in ("sequence_int32", "sequence_noexpire_int32"):
        _seq_step(grpc, model, 3, 777001, start=True)
        assert _seq_step(grpc, model, 4, 777001) == 7
    time.sleep(2 * IDLE_S + 1.5)  # past the server's idle timeout and the model's own expiry
    for model in ("sequence_int32", "sequence_noexpire_int32"):
        with pytest.raises(InferenceServerException, match="must specify the START flag"):
            _seq_step(grpc, model, 5, 777001)
        assert _seq_step(grpc, model, 1, 777002, start=True, end=True) == 1
    # The healthy model forgets the abandoned sequence (its sweeper runs every 0.75 s here, so
    # allow it a few rounds under a loaded CI); the faulty one holds it forever.
    deadline = time.monotonic() + 10
    while _metric(server, "engine_model_sequence_states", "sequence_int32") and time.monotonic() < deadline:
        time.sleep(0.25)
    assert _metric(server, "engine_model_sequence_states", "sequence_int32") == 0
    assert _metric(server, "engine_model_sequence_states", "sequence_noexpire_int32") == 1


def test_decoupled_model_streams_its_responses_in_order(grpc) -> None:
    got: queue.Queue = queue.Queue()
    grpc.start_stream(callback=lambda result, error: got.put((result, error)))
    try:
        inputs = [_input(grpcclient, "IN", np.array([100], np.int32), "INT32"),
                  _input(grpcclient, "N", np.array([5], np.int32), "INT32")]
        grpc.async_stream_infer("decoupled_int32", inputs, request_id="r1", enable_empty_final_response=True)
        values, final = [], False
        while not final:
            result, error = got.get(timeout=10)
            assert error is None
            final = result.get_response().parameters["triton_final_response"].bool_param
            out = result.as_numpy("OUT")
            if out is not None:
                values.append(int(out[0]))
        assert values == [100, 101, 102, 103, 104]
        bad = [_input(grpcclient, "IN", np.array([1], np.int32), "INT32"),
               _input(grpcclient, "N", np.array([-1], np.int32), "INT32")]
        grpc.async_stream_infer("decoupled_int32", bad, request_id="r2")
        _, error = got.get(timeout=10)
        assert error is not None and "N must be >= 0" in str(error)
    finally:
        grpc.stop_stream()


# -- faulty models -----------------------------------------------------------------------------
RATCHET_PERIOD_S = 2.0
QUEUE_SERVICE_MS = 100.0
COMPUTE_BASE_MS = 20.0
FAULTS = RepoOptions(
    models=("leak_fp32", "hang_fp32", "drift_fp32", "wrong_fp32", "crash_fp32", "plateau_fp32", "ratchet_fp32",
            "deadlock_fp32", "queue_drift_fp32", "compute_drift_fp32", "fd_leak_fp32"),
    instance_count=1, dynamic_batching=False,
    faults=FaultOptions(leak_bytes_per_request=1 << 20, hang_after_requests=3, hang_instance=0,
                        drift_ms_per_minute=3000.0, wrong_every=3, crash_after_requests=3,
                        plateau_bytes=8 << 20, plateau_time_constant=0.5,
                        ratchet_bytes_per_request=1 << 20, ratchet_period=RATCHET_PERIOD_S, ratchet_free_fraction=0.5,
                        deadlock_after_requests=3, queue_drift_service_ms=QUEUE_SERVICE_MS,
                        compute_drift_base_ms=COMPUTE_BASE_MS, compute_drift_onset=3600.0, fd_leak_every=2),
)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("faulty")
    generate_repository(root / "repo", FAULTS)
    # A hung instance holds its request forever: let the server give up on it quickly at exit.
    with serve_repository(root / "repo", root / "work", extra_args=["--exit-timeout-secs=2"]) as running:
        client = grpcclient.InferenceServerClient(running.grpc_url)
        yield running, client
        client.close()


def _ask(client, model: str, value: float = 1.0, timeout: float | None = None) -> np.ndarray:
    data = np.full((1, 8), value, np.float32)
    return client.infer(model, [_input(grpcclient, "INPUT0", data, "FP32")], client_timeout=timeout).as_numpy("OUTPUT0")


def _rss_anon_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"RssAnon:\s+(\d+)", status).group(1))


def test_leak_model_keeps_what_it_says(faulty) -> None:
    server, client = faulty
    stub = next(s for s in server.server.stub_processes() if s.instance.startswith("leak_fp32"))
    before = _rss_anon_kib(stub.pid)
    for _ in range(20):
        _ask(client, "leak_fp32")
    assert _metric(server, "engine_model_retained_bytes", "leak_fp32") == 20 << 20
    grown_mib = (_rss_anon_kib(stub.pid) - before) / 1024
    assert 18 <= grown_mib <= 26, grown_mib  # the memory is real, in the stub that served


def test_wrong_model_falsifies_every_nth_answer(faulty) -> None:
    server, client = faulty
    wrong = [not np.array_equal(_ask(client, "wrong_fp32", 2.0), np.full((1, 8), 2.0, np.float32))
             for _ in range(9)]
    assert wrong == [False, False, True] * 3
    assert _metric(server, "engine_model_wrong_answers", "wrong_fp32") == 3


def test_drift_model_gets_slower_with_time(faulty) -> None:
    server, client = faulty
    _ask(client, "drift_fp32")  # the first request of a model pays for its warm-up
    started = time.monotonic()
    _ask(client, "drift_fp32")
    first = time.monotonic() - started
    time.sleep(2.0)
    started = time.monotonic()
    _ask(client, "drift_fp32")
    later = time.monotonic() - started
    assert later - first > 0.06, (first, later)  # 50 ms/s of drift, 2 s apart: 100 ms more
    assert _metric(server, "engine_model_added_delay_ms", "drift_fp32") > 100


def test_plateau_model_fills_its_cache_and_stops(faulty) -> None:
    server, client = faulty
    for _ in range(3):
        _ask(client, "plateau_fp32")
        time.sleep(1.0)
    held = _metric(server, "engine_model_retained_bytes", "plateau_fp32")
    assert 0.8 * (8 << 20) <= held <= 8 << 20


def test_hang_model_blocks_one_instance_and_the_other_goes_on(faulty) -> None:
    server, client = faulty
    outcomes: list[str] = []
    # Which instance the server picks for each request is its own choice: instance 0 gets its 4th
    # request (the one it hangs on) sooner or later, then 4 more requests must all be served.
    while "timeout" not in outcomes[:-4] and len(outcomes) < 40:
        try:
            _ask(client, "hang_fp32", timeout=1.5)
            outcomes.append("ok")
        except InferenceServerException as exc:
            outcomes.append("timeout" if "Deadline" in str(exc) else str(exc))
    assert outcomes.count("timeout") == 1, outcomes  # the request that met the hung instance
    assert outcomes[-4:] == ["ok"] * 4, outcomes  # instance 1 serves on
    assert _metric(server, "engine_model_hung_requests", "hang_fp32", "hang_fp32_0_0") == 1
    assert _metric(server, "engine_model_hung_requests", "hang_fp32", "hang_fp32_0_1") == 0


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def test_crash_model_stub_dies_and_the_server_lives(faulty) -> None:
    server, client = faulty
    stub = next(s for s in server.server.stub_processes() if s.instance.startswith("crash_fp32"))
    for _ in range(3):  # crash_after_requests: these are answered
        assert np.array_equal(_ask(client, "crash_fp32", 4.0), np.full((1, 8), 4.0, np.float32))
    # The 4th request kills the stub; it and every later one fail, the server names the instance.
    for _ in range(2):
        with pytest.raises(InferenceServerException, match="crash_fp32_0_0' is not healthy"):
            _ask(client, "crash_fp32", timeout=20)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(stub.pid):
        time.sleep(0.1)
    assert not _alive(stub.pid)
    assert client.is_server_live()
    # The dead stub's model is not unloaded, but the other models serve on.
    assert np.array_equal(_ask(client, "plateau_fp32", 5.0, timeout=10), np.full((1, 8), 5.0, np.float32))


def test_ratchet_model_frees_part_of_what_it_takes(faulty) -> None:
    server, client = faulty
    stub = next(s for s in server.server.stub_processes() if s.instance.startswith("ratchet_fp32"))
    _ask(client, "ratchet_fp32")  # its first period (since load) ends here, with nothing yet to free
    before = _rss_anon_kib(stub.pid)  # after the first request, which also pays for the model's warm-up
    for _ in range(7):
        _ask(client, "ratchet_fp32")  # 8 MiB taken within the period (1 MiB each)
    peak_mib = (_rss_anon_kib(stub.pid) - before) / 1024
    time.sleep(RATCHET_PERIOD_S + 0.2)
    _ask(client, "ratchet_fp32")  # 1 MiB more, then the period's end: half of the 8 MiB goes
    assert _metric(server, "engine_model_retained_bytes", "ratchet_fp32") == 5 << 20
    kept_mib = (_rss_anon_kib(stub.pid) - before) / 1024
    assert 6 <= peak_mib <= 9, peak_mib  # 7 MiB more than after the first request
    assert 3 <= kept_mib <= 6 and kept_mib <= peak_mib - 2.5, (peak_mib, kept_mib)  # the pages really went back


def test_deadlock_model_stops_answering_and_requests_queue_in_the_server(faulty) -> None:
    server, client = faulty
    for _ in range(3):  # deadlock_after_requests: these are answered
        assert np.array_equal(_ask(client, "deadlock_fp32", 3.0), np.full((1, 8), 3.0, np.float32))
    outcomes: list[str] = []

    def ask() -> None:
        try:
            _ask(client, "deadlock_fp32", timeout=4.0)
            outcomes.append("ok")
        except InferenceServerException as exc:
            outcomes.append("timeout" if "Deadline" in str(exc) else str(exc))

    askers = [threading.Thread(target=ask) for _ in range(5)]
    for asker in askers:
        asker.start()
    # One request is in the deadlocked execution, the others wait in the server's queue.
    deadline = time.monotonic() + 3.0
    while _metric(server, "nv_inference_pending_request_count", "deadlock_fp32") < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _metric(server, "nv_inference_pending_request_count", "deadlock_fp32") == 4
    for asker in askers:
        asker.join()
    assert outcomes == ["timeout"] * 5, outcomes
    assert _metric(server, "engine_model_hung_requests", "deadlock_fp32") == 1
    assert np.array_equal(_ask(client, "leak_fp32", 5.0, timeout=10), np.full((1, 8), 5.0, np.float32))


def _stats(server: RunningServer, model: str) -> dict[str, tuple[int, int]]:
    """The server's cumulative (requests, ns) of each stage of the model's successful requests."""
    url = f"http://{server.http_url}/v2/models/{model}/stats"
    inference = json.loads(urllib.request.urlopen(url, timeout=5).read())["model_stats"][0]["inference_stats"]
    return {stage: (inference[stage]["count"], inference[stage]["ns"]) for stage in ("queue", "compute_infer")}


def _stage_ms(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Mean milliseconds per request in each stage between two _stats readings."""
    return {stage: (after[stage][1] - before[stage][1]) / (after[stage][0] - before[stage][0]) / 1e6
            for stage in after}


def test_queue_drift_model_serves_one_request_at_a_time(faulty) -> None:
    server, client = faulty
    latencies: list[float] = []

    data = np.ones(8, np.float32)  # no batching: the tensor is the whole request

    def ask() -> None:
        started = time.monotonic()
        client.infer("queue_drift_fp32", [_input(grpcclient, "INPUT0", data, "FP32")], client_timeout=10)
        latencies.append(time.monotonic() - started)

    ask()  # the first request pays for the model's warm-up
    before = _stats(server, "queue_drift_fp32")
    latencies.clear()
    askers = [threading.Thread(target=ask) for _ in range(5)]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join()
    service = QUEUE_SERVICE_MS / 1000
    assert max(latencies) >= 5 * service * 0.95, latencies  # served one after another, not in a batch
    stages = _stage_ms(before, _stats(server, "queue_drift_fp32"))
    # Its compute is the service time, whatever the queue; the wait is in the queue.
    assert QUEUE_SERVICE_MS <= stages["compute_infer"] < QUEUE_SERVICE_MS * 1.5, stages
    assert stages["queue"] >= QUEUE_SERVICE_MS, stages  # 0, 1, 2, 3, 4 services of waiting: 2 on average


def test_compute_drift_model_takes_its_base_time_before_its_onset(faulty) -> None:
    server, client = faulty
    # Each instance's first request pays for its warm-up: one for each, at once.
    warming = [threading.Thread(target=_ask, args=(client, "compute_drift_fp32"), kwargs={"timeout": 10})
               for _ in range(4)]
    for thread in warming:
        thread.start()
    for thread in warming:
        thread.join()
    before = _stats(server, "compute_drift_fp32")
    for _ in range(3):
        _ask(client, "compute_drift_fp32", timeout=10)
    stages = _stage_ms(before, _stats(server, "compute_drift_fp32"))
    assert COMPUTE_BASE_MS <= stages["compute_infer"] < COMPUTE_BASE_MS + 30, stages
    assert _metric(server, "engine_model_added_delay_ms", "compute_drift_fp32") == 0


def test_fd_leak_model_keeps_a_descriptor_per_n_requests(faulty) -> None:
    server, client = faulty
    stub = next(s for s in server.server.stub_processes() if s.instance.startswith("fd_leak_fp32"))
    _ask(client, "fd_leak_fp32")  # the first request pays for the model's warm-up (and is the first of a pair)
    before = len(list(Path(f"/proc/{stub.pid}/fd").iterdir()))
    for _ in range(7):
        _ask(client, "fd_leak_fp32")
    assert _metric(server, "engine_model_leaked_fds", "fd_leak_fp32") == 4  # 8 requests, one fd per 2
    assert len(list(Path(f"/proc/{stub.pid}/fd").iterdir())) - before == 4
