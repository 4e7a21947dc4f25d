"""CUDA shared memory against the real server. These run where a GPU is; elsewhere they skip
with the reason the CUDA runtime gives."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from model_repo_gen import RepoOptions, generate_repository
from shm import CudaRegion, ShmPool, cleanup, gpu_count, gpu_unavailable_reason
from shm._registration import registered_regions
from tests.server_helpers import serve_repository

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(gpu_count() == 0, reason=f"needs a CUDA GPU: {gpu_unavailable_reason()}"),
]
RUN = "testrun-cuda"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cuda")
    generate_repository(root / "repo", RepoOptions(models=("identity_fp32", "identity_bytes"), instance_count=1))
    with serve_repository(root / "repo", root / "work") as running:
        yield running


def test_region_round_trip_on_the_device() -> None:
    with CudaRegion(f"tee_{RUN}_rt", 1 << 20) as region:
        data = np.arange(1000, dtype=np.float32)
        region.write(4096, data)
        assert np.array_equal(region.read(4096, np.float32, (1000,)), data)
        assert len(region.raw_handle_b64) > 0
    assert region.closed


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_identity_with_cuda_input_and_output(server, protocol: str) -> None:
    module = grpcclient if protocol == "grpc" else httpclient
    client = module.InferenceServerClient(server.grpc_url if protocol == "grpc" else server.http_url)
    try:
        data = np.random.default_rng(5).standard_normal((1, 4096)).astype(np.float32)
        with ShmPool(client, RUN, 1, mode="cuda") as pool:
            tensor, slot = pool.infer_input("INPUT0", data, "FP32")
            out = pool.allocate(slot.byte_size)
            client.infer("identity_fp32", [tensor], outputs=[pool.requested_output("OUTPUT0", out)])
            assert np.array_equal(pool.read(out, np.float32, data.shape), data)
            names = pool.region_names
            assert set(names) <= set(registered_regions(client, cuda=True))
        assert not set(names) & set(registered_regions(client, cuda=True))
    finally:
        client.close()


def test_cleanup_unregisters_a_runs_cuda_regions(server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        pool = ShmPool(client, RUN, 2, mode="cuda", region_bytes=1 << 16)
        pool.allocate(1 << 16)
        name = pool.region_names[0]
        assert name in registered_regions(client, cuda=True)
        report = cleanup(RUN, client)
        assert name in report.unregistered and name not in registered_regions(client, cuda=True)
        pool.close()  # frees the device memory; unregistering a gone name is a no-op on the server
    finally:
        client.close()
