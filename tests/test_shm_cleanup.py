"""Cleanup by run id against the real bundled server: a SIGKILLed worker's regions are removed
from the server and from /dev/shm, and nothing of another run is touched."""

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
    RegionName,
    ShmPool,
    SystemRegion,
    belongs_to_run,
    cleanup,
    cleanup_all_runs,
    is_server_region,
    is_worker_region,
    parse_region_name,
    region_name,
    register_system,
    registered_regions,
    run_region_prefixes,
    server_region_prefix,
    standalone_server_region_prefix,
    worker_region_prefix,
)
from tests.server_helpers import serve_repository

pytestmark = pytest.mark.timeout(180)

RUN = f"t{os.getpid()}-cln"
OTHER_RUN = f"t{os.getpid()}-other"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("shm_cleanup")
    generate_repository(root / "repo", RepoOptions(models=("identity_fp32",), instance_count=1))
    with serve_repository(root / "repo", root / "work") as running:
        try:
            yield running
        finally:
            with grpcclient.InferenceServerClient(running.grpc_url) as client:
                cleanup(RUN, client)
                cleanup(OTHER_RUN, client)


@pytest.fixture(params=["grpc", "http"])
def client(request: pytest.FixtureRequest, server: Any) -> Iterator[Any]:
    if request.param == "grpc":
        c: Any = grpcclient.InferenceServerClient(server.grpc_url)
    else:
        c = httpclient.InferenceServerClient(server.http_url)
    yield c
    c.close()


@pytest.fixture(autouse=True)
def leaves_nothing() -> Iterator[None]:
    yield
    leftovers = entries(RUN) + entries(OTHER_RUN)
    cleanup(RUN)
    cleanup(OTHER_RUN)
    assert leftovers == [], f"left in /dev/shm: {leftovers}"


def entries(run_id: str) -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"tee_{run_id}_"))


def registered_of(client: Any, run_id: str) -> list[str]:
    return sorted(r.name for r in registered_regions(client) if belongs_to_run(r.name, run_id))


def mapped_by(pid: int, run_id: str) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({line.split("/dev/shm/")[1].split()[0] for line in maps.splitlines()
                   if f"/dev/shm/tee_{run_id}_" in line})


CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    import tritonclient.grpc as grpcclient
    from shm import ShmPool

    url, run_id = sys.argv[1], sys.argv[2]
    client = grpcclient.InferenceServerClient(url)
    pool = ShmPool(client, run_id, 7, mode="system", region_bytes=4096)
    data = np.arange(512, dtype=np.float32).reshape(1, 512)   # 2 KiB: two slots fill a region
    for _ in range(3):
        x, y = pool.input_slot(data), pool.output_slot(data.nbytes)
        client.infer("identity_fp32", [pool.infer_input("INPUT0", x)],
                     outputs=[pool.requested_output("OUTPUT0", y)])
        assert (pool.read(y, np.float32, data.shape) == data).all()
    print(" ".join(pool.region_names), flush=True)
    time.sleep(120)   # killed long before this ends
""")


def test_a_killed_workers_regions_are_removed_by_run_id(server: Any, client: Any) -> None:
    with ShmPool(client, OTHER_RUN, 7, mode="system") as other:  # same worker id, another run
        kept = other.output_slot(64).region
        child = subprocess.Popen([sys.executable, "-c", CHILD, server.grpc_url, RUN], cwd=REPO_ROOT,
                                 stdout=subprocess.PIPE, text=True)
        try:
            names = sorted(child.stdout.readline().split())  # type: ignore[union-attr]
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
            assert names == [region_name(RUN, 7, i) for i in range(3)]
            # What a killed worker leaves: objects in /dev/shm, registrations, the server's mappings.
            assert entries(RUN) == names
            assert registered_of(client, RUN) == names
            assert mapped_by(server.pid, RUN) == names

            report = cleanup(RUN, client)

            assert sorted(report.unregistered_system) == names and report.unregistered_cuda == ()
            assert sorted(report.unlinked) == names and report.errors == ()
            assert entries(RUN) == [] and registered_of(client, RUN) == [] and mapped_by(server.pid, RUN) == []
            # The other run is untouched: still in /dev/shm, registered, and usable.
            assert entries(OTHER_RUN) == [kept] and registered_of(client, OTHER_RUN) == [kept]
            data = np.ones((1, 8), np.float32)
            x, y = other.input_slot(data), other.output_slot(data.nbytes)
            client.infer("identity_fp32", [other.infer_input("INPUT0", x)],
                         outputs=[other.requested_output("OUTPUT0", y)])
            assert np.array_equal(other.read(y, np.float32, data.shape), data)
            assert cleanup(RUN, client) == type(report)()  # a second pass finds nothing
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
            cleanup(RUN, client)
    assert entries(OTHER_RUN) == [] and registered_of(client, OTHER_RUN) == []


def test_cleanup_of_one_worker_leaves_the_runs_other_workers(client: Any) -> None:
    with ShmPool(client, RUN, 1) as one, ShmPool(client, RUN, 2) as two:
        one.output_slot(64)
        two.output_slot(64)
        report = cleanup(RUN, client, worker_id=1)
        assert report.unregistered_system == report.unlinked == (region_name(RUN, 1, 0),)
        assert registered_of(client, RUN) == entries(RUN) == [region_name(RUN, 2, 0)]
    assert registered_of(client, RUN) == entries(RUN) == []


def test_cleanup_finds_a_runs_key_registered_under_any_name(client: Any) -> None:
    with SystemRegion(region_name(RUN, 3, 0), 4096) as region:
        register_system(client, "someone-elses-name", region.key, 4096)
        report = cleanup(RUN, client)
        assert report.unregistered_system == ("someone-elses-name",)
        assert "someone-elses-name" not in {r.name for r in registered_regions(client)}


def test_cleanup_without_a_client_only_unlinks() -> None:
    region = SystemRegion(region_name(RUN, 4, 0), 4096)
    try:
        report = cleanup(RUN)
        assert report.unlinked == (region.name,) and report.unregistered == ()
        assert not os.path.exists(region.path)
    finally:
        region.close()  # already unlinked: close only unmaps


def test_cleanup_all_runs_matches_region_names_only(tmp_path: Path, client: Any) -> None:
    # A stand-in directory: on the real /dev/shm this would also take concurrent runs' regions.
    names = [region_name("r-1", 0, 0), region_name("20261124-223501-ab12", 12, 3)]
    kept = [standalone_server_region_prefix(1234, "abcdef") + "3f9c0e1a-2b4d-4c6e-8f00-0123456789ab",  # a server's
            "tee20261124223501ab12_3f9c0e1a", "triton_python_backend_shm_region_1", "tee_r-1_w0_x"]
    for name in names + kept:
        (tmp_path / name).write_bytes(b"")
    with SystemRegion(region_name(RUN, 5, 0), 4096) as region:
        register_system(client, region.name, region.key, 4096)
        report = cleanup_all_runs(client, shm_dir=str(tmp_path))
        assert region.name in report.unregistered_system
        assert sorted(report.unlinked) == sorted(names)
        assert sorted(os.listdir(tmp_path)) == sorted(kept)


def test_region_names_parse_back_and_match_one_run_only() -> None:
    name = region_name("20261124-223501-ab12", 3, 17)
    assert name == "tee_20261124-223501-ab12_w3_17"
    assert parse_region_name(name) == parse_region_name("/" + name) == RegionName("20261124-223501-ab12", 3, 17)
    assert str(RegionName("r-1", 0, 2)) == "tee_r-1_w0_2"
    assert belongs_to_run(name, "20261124-223501-ab12") and belongs_to_run(name, "20261124-223501-ab12", 3)
    assert not belongs_to_run(name, "20261124-223501-ab12", 4)
    assert not belongs_to_run(region_name("run-10", 0, 0), "run-1")  # a prefix of a run id is another run
    for not_ours in ("tee_run_w0_0_x", "tee_srv123_abc", "tee_run-1_w0", "other_run-1_w0_0", "tee__w0_0"):
        assert parse_region_name(not_ours) is None
    for bad in ("with_underscore", "a/b", "", "-leading"):
        with pytest.raises(ValueError, match="run id"):
            region_name(bad, 0, 0)


def test_every_shm_name_of_a_run_starts_with_one_of_its_prefixes_and_is_told_apart() -> None:
    run = "20261124-223501-ab12"
    workers, server = run_region_prefixes(run)
    assert (workers, server) == (worker_region_prefix(run), server_region_prefix(run))
    assert region_name(run, 3, 17).startswith(workers) and is_worker_region(region_name(run, 3, 17))
    backend = server + "3f9c0e1a-2b4d"  # the python backend appends its own suffix to the prefix
    assert not backend.startswith(workers) and not is_worker_region(backend)
    assert is_server_region(backend, run) and is_server_region(backend)
    assert not is_server_region(backend, "20261124-223501-ab1")  # a prefix of a run id is another run
    standalone = standalone_server_region_prefix(1234, "abcdef") + "3f9c0e1a-2b4d"
    assert standalone.startswith(standalone_server_region_prefix(1234))
    assert not standalone.startswith(standalone_server_region_prefix(123))  # another process
    for other in (standalone, region_name(run, 0, 0), "triton_python_backend_shm_region_1"):
        assert not is_server_region(other) and not is_server_region(other, run)
    assert not is_worker_region(standalone)
