"""System shared memory against the real server: zero-copy answers equal inline ones, errors are
typed with the server's text, and nothing is left registered or in /dev/shm."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from model_repo_gen import RepoOptions, generate_repository
from shm import (
    CudaUnavailable,
    RegionAlreadyRegistered,
    RegionBoundsError,
    RegionKeyError,
    RegionNotRegistered,
    RegistrationRefused,
    ShmPool,
    SystemRegion,
    classify,
    cleanup,
    gpu_count,
    resolve_mode,
)
from shm._registration import register_system, registered_regions
from tests.server_helpers import serve_repository

pytestmark = pytest.mark.timeout(180)
RUN = "testrun-shm"
CYCLES = 2000  # the reference suite does 100,000 cycles; 2,000 shows the same trend in a few seconds here


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("shm")
    generate_repository(root / "repo", RepoOptions(models=("identity_fp32", "identity_bytes"), instance_count=1))
    with serve_repository(root / "repo", root / "work") as running:
        yield running


@pytest.fixture(params=["grpc", "http"])
def client(request, server):
    module = grpcclient if request.param == "grpc" else httpclient
    c = module.InferenceServerClient(server.grpc_url if request.param == "grpc" else server.http_url)
    yield c
    c.close()


def _ours() -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"tee_{RUN}")]


def _mapped_by(pid: int, name: str) -> bool:
    return name in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_shm_in_and_out_equals_inline(client, server, datatype: str) -> None:
    model = "identity_fp32" if datatype == "FP32" else "identity_bytes"
    module = grpcclient if "grpc" in type(client).__module__ else httpclient
    if datatype == "FP32":
        data = np.random.default_rng(3).standard_normal((1, 1000)).astype(np.float32)
    else:
        data = np.array([[b"\x00bin", "ünï".encode(), b"", b"z" * 99]], dtype=np.object_)
    inline_in = module.InferInput("INPUT0", list(data.shape), datatype)
    inline_in.set_data_from_numpy(data)
    inline = client.infer(model, [inline_in]).as_numpy("OUTPUT0")
    with ShmPool(client, RUN, 1, mode="system") as pool:
        tensor, in_slot = pool.infer_input("INPUT0", data, datatype)
        out_slot = pool.allocate(in_slot.byte_size)
        result = client.infer(model, [tensor], outputs=[pool.requested_output("OUTPUT0", out_slot)])
        got = pool.read(out_slot, np.object_ if datatype == "BYTES" else np.float32, data.shape)
        assert result.get_output("OUTPUT0") is not None
        if datatype == "BYTES":
            assert [bytes(x) for x in got.reshape(-1)] == [bytes(x) for x in inline.reshape(-1)]
        else:
            assert np.array_equal(got, inline) and np.array_equal(got, data)
        names = pool.region_names
        assert set(names) <= set(registered_regions(client))
        assert all(_mapped_by(server.pid, n) for n in names)
    assert not set(names) & set(registered_regions(client))
    assert _ours() == []
    assert not any(_mapped_by(server.pid, n) for n in names)


def test_several_tensors_at_offsets_in_one_region(client) -> None:
    with ShmPool(client, RUN, 2, mode="system", region_bytes=1 << 20) as pool:
        inputs = [np.full((1, 100 + i), i, np.float32) for i in range(5)]
        slots = []
        for data in inputs:
            tensor, slot = pool.infer_input("INPUT0", data, "FP32")
            out = pool.allocate(slot.byte_size)
            client.infer("identity_fp32", [tensor], outputs=[pool.requested_output("OUTPUT0", out)])
            slots.append((out, data))
        assert len(pool.region_names) == 1 and len({s.offset for s, _ in slots}) == 5
        for out, data in slots:  # each answer still where its request put it
            assert np.array_equal(pool.read(out, np.float32, data.shape), data)
        released = slots[0][0]
        pool.release(released)
        assert pool.allocate(released.byte_size) == released  # reused, not re-carved


def test_server_errors_are_typed_with_the_servers_text(client, server) -> None:
    with pytest.raises(RegionKeyError, match="Unable to open shared memory region"):
        register_system(client, "nokey", f"/tee_{RUN}_nonexistent", 64)
    with SystemRegion(f"tee_{RUN}_errors", 4096) as region:
        # Larger than the object: refused ("failed to register ... invalid args" on 2.51, or
        # "Invalid shared memory region" for smaller overshoots): typed either way, text kept.
        with pytest.raises((RegistrationRefused, RegionBoundsError), match="shared memory region"):
            register_system(client, "toolarge", region.key, 1 << 30)
        register_system(client, "errs", region.key, 4096)
        try:
            with pytest.raises(RegionAlreadyRegistered, match="already in manager"):
                register_system(client, "errs", region.key, 4096)
            module = grpcclient if "grpc" in type(client).__module__ else httpclient
            data = np.ones((1, 16), np.float32)
            bad = module.InferInput("INPUT0", [1, 16], "FP32")
            bad.set_shared_memory("errs", 64, offset=4090)
            with pytest.raises(Exception) as err:
                client.infer("identity_fp32", [bad])
            assert isinstance(classify(err.value), RegionBoundsError)
            good = module.InferInput("INPUT0", [1, 16], "FP32")
            good.set_data_from_numpy(data)
            small = module.InferRequestedOutput("OUTPUT0")
            small.set_shared_memory("errs", 32)
            with pytest.raises(Exception) as err:
                client.infer("identity_fp32", [good], outputs=[small])
            assert isinstance(classify(err.value), RegionBoundsError) and "should be at least" in str(err.value)
            missing = module.InferInput("INPUT0", [1, 16], "FP32")
            missing.set_shared_memory("nosuch", 64)
            with pytest.raises(Exception) as err:
                client.infer("identity_fp32", [missing])
            assert isinstance(classify(err.value), RegionNotRegistered)
        finally:
            client.unregister_system_shared_memory("errs")


def test_close_is_idempotent_and_complete(client) -> None:
    pool = ShmPool(client, RUN, 3, mode="system", region_bytes=4096)
    for _ in range(3):
        pool.allocate(4096)  # one region each
    names = pool.region_names
    assert len(names) == 3 and len(_ours()) == 3
    pool.close()
    pool.close()
    assert _ours() == [] and not set(names) & set(registered_regions(client))


def test_killed_worker_is_cleaned_up_by_run_id(server) -> None:
    script = textwrap.dedent(f"""
        import time, numpy as np, tritonclient.grpc as g
        from shm import ShmPool
        client = g.InferenceServerClient({server.grpc_url!r})
        pool = ShmPool(client, {RUN!r}, 7, mode="system", region_bytes=4096)
        for _ in range(3):
            pool.allocate(4096)
        print("ready", flush=True)
        time.sleep(60)
    """)
    other = SystemRegion("tee_otherrun_w0_0", 4096)  # another run's region: must survive
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert child.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        child.kill()
        child.wait(10)
        assert len(_ours()) == 3 and len([n for n in registered_regions(client) if RUN in n]) == 3
        report = cleanup(RUN, client)
        assert len(report.unregistered) == 3 and len(report.unlinked) == 3
        assert _ours() == [] and not [n for n in registered_regions(client) if RUN in n]
        assert os.path.exists("/dev/shm/tee_otherrun_w0_0")
    finally:
        child.kill()
        child.wait()
        other.close()
        cleanup(RUN, client)
        client.close()


def test_region_churn_does_not_grow_the_client(server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    process = psutil.Process()

    def cycle(i: int) -> None:
        with SystemRegion(f"tee_{RUN}_churn", 65536) as region:
            client.register_system_shared_memory("churn", region.key, 65536)
            client.unregister_system_shared_memory("churn")

    for i in range(200):  # warm-up: allocator and gRPC buffers settle
        cycle(i)
    before = process.memory_info().rss
    for i in range(CYCLES):
        cycle(i)
    growth = (process.memory_info().rss - before) / before
    client.close()
    assert growth < 0.02, f"client RSS grew {growth:.1%} over {CYCLES} cycles"


def test_cuda_is_refused_cleanly_without_a_gpu_and_auto_falls_back(server) -> None:
    if gpu_count():
        pytest.skip("a GPU is present: the fallback path does not apply")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        with pytest.raises(CudaUnavailable, match="needs a GPU"):
            with ShmPool(client, RUN, 9, mode="cuda") as pool:
                pool.allocate(64)
        mode, reason = resolve_mode("auto")
        assert mode == "system" and "fell back" in reason
        with ShmPool(client, RUN, 9, mode="auto") as pool:
            assert pool.mode == "system" and pool.fallback_reason
            pool.allocate(64)
    finally:
        client.close()
    assert _ours() == []
