"""The load generator against the real server: every request a worker's executor sends comes back
as a record (the server's own success count agrees), answers are validated against the plan's
expected rows, open-loop arrivals keep their schedule, shared memory is released, and plans the
model cannot take fail before any load with a LoadError that says why."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

import engine
from model_repo_gen import RepoOptions, generate_repository
from shm import gpu_count, gpu_unavailable_reason
from tests.server_helpers import serve_repository, successes

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("loadgen")
    generate_repository(root / "repo", RepoOptions(models=("identity_fp32", "identity_bytes", "sequence_int32"),
                                                   instance_count=1))
    with serve_repository(root / "repo", root / "work") as running:
        yield running


def _rows(count: int = 8, elements: int = 16) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(5)
    return [{"INPUT0": rng.random((1, elements), dtype=np.float32)} for _ in range(count)]


def _echo(rows: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    return [{"OUTPUT0": row["INPUT0"]} for row in rows]


def _regions_of(run_id: str) -> list[str]:
    return [p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(f"tee_{run_id}_")]


def test_windows_fold_records_by_completion_time() -> None:
    from engine.library._load_result import Records

    start = 1_000_000_000
    ms = 1_000_000
    # Four requests: two complete in the first 100 ms window, one in the third; one failed in the third.
    records = Records(start_ns=np.array([start + 10 * ms, start + 20 * ms, start + 210 * ms, start + 220 * ms]),
                      latency_ns=np.array([5 * ms, 50 * ms, 30 * ms, 1 * ms]),
                      status=np.array([0, 2, 0, 1], np.uint8), plan=np.array([0, 0, 1, 1], np.uint16),
                      sequence_id=np.zeros(4, np.uint64), step=np.zeros(4, np.int32))
    result = engine.LoadResult(records=records, run_id="r", totals=(), events=(), started_ns=start,
                               duration_s=0.3, protocol="grpc", shm="none")
    table = result.windows(0.1)
    assert table.start_s.tolist() == pytest.approx([0.0, 0.2])
    assert (table.requests.tolist(), table.ok.tolist(), table.wrong.tolist(), table.errors.tolist()) == \
        ([2, 2], [1, 1], [1, 0], [0, 1])
    assert table.max_ms.tolist() == pytest.approx([50.0, 30.0], rel=0.01)
    assert result.windows(0.1, plan=1).requests.tolist() == [2]
    assert not result.passed and len(records.select(records.ok)) == 2


@pytest.mark.parametrize("protocol,shm", [("grpc", "system"), ("http", "system"), ("grpc", "none"),
                                          ("http", "none")])
def test_every_request_is_recorded_and_validated(server, protocol: str, shm: str) -> None:
    rows = _rows()
    before = successes(server.metrics_url)
    result = engine.generate_load(server.server, engine.LoadPlan("identity_fp32", rows, _echo(rows)),
                                  duration=2.0, concurrency=4, protocol=protocol, shm=shm)
    records = result.records
    assert result.passed, result.failures()
    assert len(records) > 20 and records.ok.all()
    assert result.totals[0].requests == result.totals[0].plans == len(records) and result.totals[0].failed == 0
    assert successes(server.metrics_url) - before == len(records)  # the server counted exactly these
    assert (records.plan == 0).all() and (records.latency_ns > 0).all() and (records.step == 0).all()
    assert (result.shm, result.protocol, result.dropped) == (shm, protocol, 0)
    assert 2.0 <= result.duration_s < 10.0
    assert records.start_ns.min() >= result.started_ns
    windows = result.windows(0.5)
    assert windows.requests.sum() == len(records) and (windows.p99_ms >= windows.p50_ms).all()
    assert np.allclose(windows.throughput, windows.requests / 0.5)
    assert _regions_of(result.run_id) == []  # the worker's pools are unregistered and unlinked


def test_wrong_expectations_are_counted_wrong_with_the_mismatch_quoted(server) -> None:
    rows = _rows(2)
    expected = [{"OUTPUT0": row["INPUT0"] + 1} for row in rows]
    result = engine.generate_load(server.server, engine.LoadPlan("identity_fp32", rows, expected), duration=1.0)
    assert not result.passed
    assert (result.records.status == engine.Records.STATUS_NAMES.index("wrong")).all()
    assert result.totals[0].failed == result.totals[0].plans > 0
    assert "OUTPUT0" in result.failures()[0] and "!= expected" in result.failures()[0]


def test_an_open_loop_keeps_its_schedule_and_two_plans_share_the_load(server) -> None:
    floats = _rows(4)
    texts = [{"INPUT0": np.array([[b"abc", b"de"]], dtype=np.object_)}]
    plans = [engine.LoadPlan("identity_fp32", floats, _echo(floats), weight=3),
             engine.LoadPlan("identity_bytes", texts, [{"OUTPUT0": texts[0]["INPUT0"]}], weight=1)]
    result = engine.generate_load(server.server, plans, duration=3.0, rate=40.0, protocol="grpc", shm="system", seed=3)
    assert result.passed, result.failures()
    records = result.records
    assert 90 <= len(records) <= 130  # 40 plans/s for 3 s
    gaps = np.diff(np.sort(records.start_ns)) / 1e6
    assert abs(np.median(gaps) - 25.0) < 1.0  # each due 25 ms after the last, whatever the server's pace
    shares = np.bincount(records.plan, minlength=2) / len(records)
    assert 0.6 < shares[0] < 0.9  # weights 3 : 1
    assert [t.model for t in result.totals] == ["identity_fp32", "identity_bytes"]


def test_sequences_of_rows_run_start_to_end(server) -> None:
    rows = [{"INPUT": np.array([[v]], dtype=np.int32)} for v in range(1, 5)]
    result = engine.generate_load(server.server, engine.LoadPlan("sequence_int32", rows, sequence=True),
                                  duration=2.0, protocol="grpc_stream")
    assert result.passed, result.failures()
    steps = result.records.step
    assert (result.records.sequence_id > 0).all() and steps.min() == 0 and steps.max() > 0


def test_load_runs_under_a_running_event_loop(server) -> None:
    rows = _rows(1)

    async def main() -> engine.LoadResult:  # e.g. a notebook, or an async application
        return engine.generate_load(server.server, engine.LoadPlan("identity_fp32", rows), duration=0.5)

    assert asyncio.run(main()).passed


@pytest.mark.parametrize("plan,message", [
    (engine.LoadPlan("no_such_model", [{"INPUT0": np.zeros((1, 4), np.float32)}]),
     "LoadPlan model 'no_such_model' is not ready on the server (models: "),
    (engine.LoadPlan("identity_fp32", [{"INPUT0": np.zeros((1, 4), np.float64)}]),
     "LoadPlan identity_fp32: inputs[0]['INPUT0'] is float64 (FP64); the model's input is FP32 (float32)"),
    (engine.LoadPlan("identity_fp32", [{"INPUT9": np.zeros((1, 4), np.float32)}]),
     "LoadPlan identity_fp32: no input 'INPUT9' (inputs: INPUT0)"),
    (engine.LoadPlan("identity_fp32", [{"INPUT0": np.zeros((1, 4), np.float32)}], [{"OUT": np.zeros(4)}]),
     "LoadPlan identity_fp32: expected[0] names ['OUT'], not outputs (outputs: OUTPUT0)"),
    (engine.LoadPlan("identity_fp32", [{"INPUT0": np.zeros((9, 4), np.float32)}]),
     "LoadPlan identity_fp32: batch_size 9 exceeds its max_batch_size 8"),
])
def test_a_plan_the_model_cannot_take_is_a_load_error(server, plan: engine.LoadPlan, message: str) -> None:
    with pytest.raises(engine.LoadError) as raised:
        engine.generate_load(server.server, plan, duration=1.0)
    assert str(raised.value).startswith(message)


def test_bad_arguments_are_value_errors(server) -> None:
    plan = engine.LoadPlan("identity_fp32", _rows(1))
    for kwargs, message in (({"protocol": "udp"}, "protocol='udp'"), ({"concurrency": 0}, "concurrency=0"),
                            ({"rate": 0.0}, "rate=0.0"), ({"shm": "gpu"}, "shm='gpu'"),
                            ({"cuda_device": -1}, "cuda_device=-1"), ({"cuda_device": "1"}, "cuda_device='1'")):
        with pytest.raises(ValueError, match=message):
            engine.generate_load(server.server, plan, duration=1.0, **kwargs)


@pytest.mark.skipif(gpu_count() > 0, reason="a GPU is present: CUDA shared memory is tested below")
def test_cuda_shared_memory_without_a_gpu_says_why(server) -> None:
    with pytest.raises(engine.CudaUnavailable, match="CUDA shared memory pool: "):
        engine.generate_load(server.server, engine.LoadPlan("identity_fp32", _rows(1)), duration=1.0, shm="cuda")


@pytest.mark.skipif(gpu_count() == 0, reason=f"CUDA shared memory needs a GPU: {gpu_unavailable_reason()}")
def test_cuda_shared_memory_carries_the_inputs(server) -> None:
    rows = _rows()
    result = engine.generate_load(server.server, engine.LoadPlan("identity_fp32", rows, _echo(rows)), duration=2.0,
                                  concurrency=2, shm="cuda")
    assert result.passed and result.shm == "cuda" and len(result.records) > 0


@pytest.mark.skipif(gpu_count() < 2, reason=f"needs two GPUs: {gpu_count()} usable "
                                           f"({gpu_unavailable_reason() or 'one device'})")
def test_cuda_shared_memory_on_the_device_asked_for(server) -> None:
    rows = _rows()
    result = engine.generate_load(server.server, engine.LoadPlan("identity_fp32", rows, _echo(rows)), duration=2.0,
                                  shm="cuda", cuda_device=1)
    assert result.passed and result.shm == "cuda" and len(result.records) > 0
    with pytest.raises(ValueError, match=f"cuda_device={gpu_count()}: this host has"):
        engine.generate_load(server.server, engine.LoadPlan("identity_fp32", rows), duration=1.0, shm="cuda",
                             cuda_device=gpu_count())
