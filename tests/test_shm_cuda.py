"""CUDA shared memory against the real bundled server.

The tests marked `needs_gpu` run where cuda-python sees a GPU and skip elsewhere with the CUDA
runtime's own reason (`needs_two_gpus`: where it sees two). The others run everywhere: without a
GPU, CUDA is refused with a reason, "auto" falls back to system memory, CUDA errors come back
typed, and `[workers] cuda_device` is validated and reaches every place that makes CUDA regions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from engine.config import ConfigError, PerfSection, ScenariosSection, config_from_dict
from model_repo_gen import RepoOptions, build_specs, generate_repository
from shm import (
    CudaError,
    CudaRegion,
    CudaUnavailable,
    RegistrationRefused,
    ShmPool,
    belongs_to_run,
    cleanup,
    gpu_count,
    gpu_unavailable_reason,
    region_name,
    register_cuda,
    registered_regions,
    resolve_mode,
)
from tests.server_helpers import serve_repository

pytestmark = pytest.mark.timeout(180)

GPUS = gpu_count()
needs_gpu = pytest.mark.skipif(GPUS == 0, reason=f"needs a CUDA GPU: {gpu_unavailable_reason()}")
needs_two_gpus = pytest.mark.skipif(GPUS < 2, reason=f"needs two CUDA GPUs, {GPUS} here"
                                                     + (f": {gpu_unavailable_reason()}" if GPUS == 0 else ""))
without_gpu = pytest.mark.skipif(GPUS > 0, reason="a GPU is present: the no-GPU behaviour cannot be seen")
RUN = f"t{os.getpid()}-cuda"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("shm_cuda")
    generate_repository(root / "repo", RepoOptions(models=("identity_fp32", "identity_bytes"), instance_count=1))
    with serve_repository(root / "repo", root / "work") as running:
        try:
            yield running
        finally:
            with grpcclient.InferenceServerClient(running.grpc_url) as client:
                cleanup(RUN, client)


def make_client(server: Any, protocol: str) -> Any:
    if protocol == "grpc":
        return grpcclient.InferenceServerClient(server.grpc_url)
    return httpclient.InferenceServerClient(server.http_url)


def cuda_names(client: Any) -> set[str]:
    return {r.name for r in registered_regions(client, "cuda")}


@pytest.fixture(autouse=True)
def leaves_nothing() -> Iterator[None]:
    yield
    leftovers = sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"tee_{RUN}_"))
    cleanup(RUN)
    assert leftovers == [], f"left in /dev/shm: {leftovers}"


# -- with a GPU ------------------------------------------------------------------------------------

@needs_gpu
def test_cuda_region_round_trip_on_the_device() -> None:
    with CudaRegion(region_name(RUN, 0, 0), 1 << 20) as region:
        assert len(region.raw_handle) == 64  # CUDA_IPC_HANDLE_SIZE
        data = np.arange(1000, dtype=np.float32)
        assert region.write(4096, data) == data.nbytes
        assert np.array_equal(region.read(4096, np.float32, (1000,)), data)
        out = np.empty((10, 100), np.float32)
        assert region.read(4096, np.float32, (10, 100), out=out) is out and np.array_equal(out.reshape(-1), data)
        region.fill(4096, 400)
        assert (region.read(4096, np.float32, (100,)) == 0).all()
        strings = np.array([b"\x00bin", "ünï".encode(), b""], dtype=np.object_)
        region.write(0, strings)
        assert region.read_bytes(0, (3,)).tolist() == strings.tolist()
    region.close()
    assert region.closed


@needs_gpu
@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_identity_with_cuda_input_and_output(server: Any, protocol: str, datatype: str) -> None:
    client = make_client(server, protocol)
    module = grpcclient if protocol == "grpc" else httpclient
    model = "identity_fp32" if datatype == "FP32" else "identity_bytes"
    if datatype == "FP32":
        data: np.ndarray = np.random.default_rng(5).standard_normal((2, 4096)).astype(np.float32)
    else:
        data = np.array([[b"\x00bin", "ünï".encode(), b"", b"z" * 99]], dtype=np.object_)
    try:
        inline_in = module.InferInput("INPUT0", list(data.shape), datatype)
        inline_in.set_data_from_numpy(data)
        inline = client.infer(model, [inline_in]).as_numpy("OUTPUT0")
        with ShmPool(client, RUN, 1, mode="cuda") as pool:
            assert pool.mode == "cuda" and pool.fallback_reason == ""
            x = pool.input_slot(data)
            y = pool.output_slot(x.byte_size)
            result = client.infer(model, [pool.infer_input("INPUT0", x)], outputs=[pool.requested_output("OUTPUT0", y)])
            got = pool.read_output(result, "OUTPUT0", y)  # a host copy of the device answer
            assert got.tolist() == inline.tolist() == data.tolist()
            names = pool.region_names
            assert set(names) <= cuda_names(client)
        assert not set(names) & cuda_names(client)
    finally:
        client.close()


@needs_gpu
def test_each_cuda_input_is_on_the_device_before_the_request_leaves(server: Any) -> None:
    """The same input slot rewritten with new values before every request: a copy still on its way
    to the device when the request left would show as the previous request's values coming back.
    4 MiB, the size where a pageable cudaMemcpy returns with the DMA still running."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    rng = np.random.default_rng(11)
    try:
        with ShmPool(client, RUN, 2, mode="cuda") as pool:
            data = rng.standard_normal((1, 1 << 20)).astype(np.float32)
            x, y = pool.input_slot(data), pool.output_slot(data.nbytes)
            for _ in range(20):
                pool.poison(y)
                result = client.infer("identity_fp32", [pool.infer_input("INPUT0", x)],
                                      outputs=[pool.requested_output("OUTPUT0", y)])
                assert np.array_equal(pool.read_output(result, "OUTPUT0", y), data)
                data = rng.standard_normal((1, 1 << 20)).astype(np.float32)
                pool.write(x, data)
    finally:
        client.close()


@needs_gpu
def test_a_region_leaves_the_callers_device_current() -> None:
    from cuda.bindings import runtime

    from shm._cuda import check

    before = check(runtime.cudaGetDevice(), "cudaGetDevice")
    check(runtime.cudaSetDevice(before), "cudaSetDevice")  # a context on it: it must come back
    with CudaRegion(region_name(RUN, 0, 1), 4096, device_id=GPUS - 1) as region:
        region.write(0, np.arange(16, dtype=np.int32))
        region.fill(64, 64, 0xFF)
        assert region.read(0, np.int32, (16,)).tolist() == list(range(16))
        assert (region.read_raw(64, np.empty(64, np.uint8)) == 0xFF).all()
        assert check(runtime.cudaGetDevice(), "cudaGetDevice") == before
    assert check(runtime.cudaGetDevice(), "cudaGetDevice") == before


@needs_two_gpus
def test_regions_on_device_1_create_nothing_on_device_0() -> None:
    """A fresh process: regions, copies and a pool-style fill on device 1 leave device 0 without a
    context (a context costs hundreds of MiB of that GPU's memory per worker)."""
    child_code = textwrap.dedent("""
        import sys
        import numpy as np
        from cuda.bindings import driver
        from shm import CudaRegion
        with CudaRegion(sys.argv[1], 1 << 20, device_id=1) as region:
            region.write(0, np.arange(1000, dtype=np.float32))
            region.fill(8192, 64)
            assert np.array_equal(region.read(0, np.float32, (1000,)), np.arange(1000, dtype=np.float32))
        states = [driver.cuDevicePrimaryCtxGetState(driver.CUdevice(d))[2] for d in (0, 1)]
        print(states)
    """)
    done = subprocess.run([sys.executable, "-c", child_code, region_name(RUN, 0, 2)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[0,", "1]"]


@needs_gpu
def test_auto_picks_cuda_with_a_gpu() -> None:
    assert resolve_mode("auto") == ("cuda", "")


@needs_gpu
def test_cleanup_unregisters_a_killed_workers_cuda_regions(server: Any) -> None:
    child_code = textwrap.dedent("""
        import sys, time
        import tritonclient.grpc as grpcclient
        from shm import ShmPool
        client = grpcclient.InferenceServerClient(sys.argv[1])
        pool = ShmPool(client, sys.argv[2], 8, mode="cuda", region_bytes=1 << 16)
        for _ in range(3):
            pool.output_slot(1 << 16)
        print(" ".join(pool.region_names), flush=True)
        time.sleep(120)
    """)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    child = subprocess.Popen([sys.executable, "-c", child_code, server.grpc_url, RUN], cwd=REPO_ROOT,
                             stdout=subprocess.PIPE, text=True)
    try:
        names = sorted(child.stdout.readline().split())  # type: ignore[union-attr]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        assert names == [region_name(RUN, 8, i) for i in range(3)]
        # The driver frees a dead process's device memory, but the server still holds the handles.
        assert {n for n in cuda_names(client) if belongs_to_run(n, RUN)} == set(names)
        report = cleanup(RUN, client)
        assert sorted(report.unregistered_cuda) == names and report.errors == ()
        assert not {n for n in cuda_names(client) if belongs_to_run(n, RUN)}
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        cleanup(RUN, client)
        client.close()


# -- everywhere ------------------------------------------------------------------------------------

@without_gpu
def test_cuda_is_refused_with_the_reason_when_there_is_no_gpu(server: Any) -> None:
    reason = gpu_unavailable_reason()
    assert reason
    with pytest.raises(CudaUnavailable) as raised:
        CudaRegion(region_name(RUN, 0, 0), 1024)
    assert reason in str(raised.value)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        with pytest.raises(CudaUnavailable, match="CUDA shared memory pool") as raised:
            ShmPool(client, RUN, 9, mode="cuda")
        assert reason in str(raised.value)
        assert not cuda_names(client)
    finally:
        client.close()


@without_gpu
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_auto_falls_back_to_system_memory_and_says_why(server: Any, protocol: str) -> None:
    mode, why = resolve_mode("auto")
    assert mode == "system" and gpu_unavailable_reason() in why
    client = make_client(server, protocol)
    try:
        with ShmPool(client, RUN, 9, mode="auto") as pool:
            assert pool.mode == "system" and pool.fallback_reason == why
            data = np.arange(64, dtype=np.float32).reshape(1, 64)
            x, y = pool.input_slot(data), pool.output_slot(data.nbytes)
            assert x.kind == y.kind == "system"
            client.infer("identity_fp32", [pool.infer_input("INPUT0", x)],
                         outputs=[pool.requested_output("OUTPUT0", y)])
            assert np.array_equal(pool.read(y, np.float32, data.shape), data)
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_server_refuses_a_handle_it_cannot_open(server: Any, protocol: str) -> None:
    """A zeroed IPC handle is invalid with or without a GPU; without one, the server (built with
    CUDA support) cannot open any handle. Either way: RegistrationRefused with the server's text."""
    client = make_client(server, protocol)
    try:
        with pytest.raises(RegistrationRefused, match="failed to register shared memory region"):
            register_cuda(client, region_name(RUN, 0, 0), bytes(64), 0, 1024)
        assert not cuda_names(client)
    finally:
        client.close()


def test_cuda_runtime_errors_are_typed_with_cudas_text() -> None:
    from cuda.bindings import runtime

    from shm._cuda import check

    with pytest.raises(CudaError) as raised:
        check(runtime.cudaSetDevice(1_000_000), "cudaSetDevice(1000000)")  # no such device, or no driver
    err, text = runtime.cudaGetErrorString(runtime.cudaError_t(raised.value.code))
    assert raised.value.code != 0 and text.decode() in str(raised.value)
    assert str(raised.value).startswith("cudaSetDevice(1000000) failed: cudaError")


def test_a_missing_device_is_refused_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The region and the pool check the device against the devices present before any CUDA call
    (one GPU pretended here), and the pool before it registers anything with the server."""
    import shm._cuda
    import shm._pool

    monkeypatch.setattr(shm._cuda, "gpu_count", lambda: 1)
    monkeypatch.setattr(shm._pool, "gpu_count", lambda: 1)
    with pytest.raises(CudaUnavailable, match=r"no CUDA device 1 \(1 present: 0 to 0\)"):
        CudaRegion(region_name(RUN, 0, 0), 1024, device_id=1)
    client = grpcclient.InferenceServerClient("127.0.0.1:1")  # never called: nothing listens there
    try:
        for mode in ("cuda", "auto"):
            with pytest.raises(CudaUnavailable, match=r"CUDA shared memory pool: no CUDA device 3 \(1 present"):
                ShmPool(client, RUN, 9, mode=mode, device_id=3)
        with pytest.raises(CudaUnavailable, match="no CUDA device -1"):
            ShmPool(client, RUN, 9, mode="cuda", device_id=-1)
    finally:
        client.close()


@without_gpu
def test_without_a_gpu_any_device_is_refused_with_the_reason() -> None:
    reason = gpu_unavailable_reason()
    with pytest.raises(CudaUnavailable) as raised:
        CudaRegion(region_name(RUN, 0, 0), 1024, device_id=1)
    assert reason in str(raised.value)
    client = grpcclient.InferenceServerClient("127.0.0.1:1")
    try:
        with pytest.raises(CudaUnavailable, match="CUDA shared memory pool") as raised:
            ShmPool(client, RUN, 9, mode="cuda", device_id=1)
        assert reason in str(raised.value)
        with ShmPool(client, RUN, 9, mode="auto", device_id=1) as pool:  # no region yet: no server call
            assert pool.mode == "system" and reason in pool.fallback_reason
    finally:
        client.close()


def test_cuda_device_is_read_and_checked_against_the_gpus_present() -> None:
    assert config_from_dict({}, gpu_count=lambda: 0).workers.cuda_device == 0
    config = config_from_dict({"workers": {"shm": "cuda", "cuda_device": 1}}, gpu_count=lambda: 2)
    assert config.workers.cuda_device == 1
    with pytest.raises(ConfigError, match=r"workers.cuda_device = 2: this host has 2 CUDA device\(s\): 0 to 1"):
        config_from_dict({"workers": {"shm": "cuda", "cuda_device": 2}}, gpu_count=lambda: 2)
    with pytest.raises(ConfigError, match="workers.cuda_device = -1"):
        config_from_dict({"workers": {"cuda_device": -1}}, gpu_count=lambda: 2)
    with pytest.raises(ConfigError, match="workers.cuda_device"):
        config_from_dict({"workers": {"cuda_device": "1"}}, gpu_count=lambda: 2)
    # No GPU: "auto" falls back to system memory, where the device does not matter.
    assert config_from_dict({"workers": {"cuda_device": 3}}, gpu_count=lambda: 0).workers.cuda_device == 3


def _config_with_device(device: int) -> Any:
    return config_from_dict({"workers": {"count": 2, "shm": "cuda", "cuda_device": device}}, gpu_count=lambda: 4)


def test_the_configured_device_reaches_each_workers_spec(tmp_path: Path) -> None:
    from engine.runner.context import RunContext
    from engine.runner.pool import WorkerPool

    started: list[Any] = []
    backend = SimpleNamespace(remote_endpoint="", start_worker=lambda spec, info: started.append(spec) or spec)
    target = SimpleNamespace(info=SimpleNamespace(weight=1.0, name=""), name="",
                             endpoints=SimpleNamespace(grpc="127.0.0.1:1", http="127.0.0.1:2"))
    ctx = RunContext(config=_config_with_device(2), paths=SimpleNamespace(run_id="r1", root=tmp_path),
                     settings=None, say=print, targets=[target], backend=backend,
                     host=SimpleNamespace(path="", host_inputs=()))  # type: ignore[arg-type]
    WorkerPool(ctx, None).start(deadline=ctx.clock() + 60)  # type: ignore[arg-type]
    assert [(spec.shm_mode, spec.cuda_device) for spec in started] == [("cuda", 2), ("cuda", 2)]


class _Pools:
    """Stands in for ShmPool: records what each pool was made with."""

    made: list[dict[str, Any]] = []

    def __init__(self, client: Any, run_id: str, worker_id: int, mode: str = "system", **kw: Any) -> None:
        self.client, self.fallback_reason = client, ""
        _Pools.made.append({"mode": mode, **kw})


def test_a_worker_makes_its_cuda_pool_on_the_spec_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.worker
    from workers.worker import Worker, WorkerSpec

    monkeypatch.setattr(workers.worker, "ShmPool", _Pools)
    _Pools.made = []
    spec = WorkerSpec(worker_id=0, run_id="r1", seed=1, id_base=1, id_block=1, grpc_url="127.0.0.1:1",
                      http_url="127.0.0.1:2", protocol="grpc", concurrency=1, models=(),
                      scenarios=ScenariosSection(), telemetry_endpoint="ipc:///nowhere", deadline_s=1.0,
                      shm_mode="cuda", cuda_device=3)
    pools = Worker._open_pools(SimpleNamespace(spec=spec, sender=None))  # type: ignore[arg-type]
    for pool in pools.values():
        pool.client.close()
    assert _Pools.made == [{"mode": "cuda", "device_id": 3}]


def test_perf_makes_its_cuda_pools_on_the_configured_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import engine.perf.measure as measure
    from engine.perf import PointSpec
    from engine.perf.results import FAILED

    def refuse(client: Any, run_id: str, worker_id: int, mode: str = "system", **kw: Any) -> None:
        raise CudaUnavailable(f"pool {mode} on device {kw.get('device_id')}")

    monkeypatch.setattr(measure, "ShmPool", refuse)
    settings = measure.MeasureSettings.from_perf(PerfSection(), 1, cuda_device=2)
    model = build_specs(RepoOptions(models=("identity_fp32",)))[0]
    spec = PointSpec("identity_fp32", "grpc", "cuda", 1, 16, "closed", 1.0)
    ctx = measure.PointContext(SimpleNamespace(grpc="127.0.0.1:1", http="127.0.0.1:2"), model, "r1", 0, 0.0)
    result = asyncio.run(measure.measure_point(spec, ctx, settings, None))  # type: ignore[arg-type]
    assert (result.status, result.reason) == (FAILED, "shared memory: pool cuda on device 2")
