"""CUDA shared memory against the real bundled server.

The tests marked `needs_gpu` run where cuda-python sees a GPU and skip elsewhere with the CUDA
runtime's own reason. The others run everywhere: without a GPU, CUDA is refused with a reason,
"auto" falls back to system memory, and CUDA errors come back typed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from model_repo_gen import RepoOptions, generate_repository
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
