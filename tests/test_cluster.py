"""Scale-out on Ray: workers as actors over a cluster, a fleet of servers, placement beside a
server, CURVE-guarded telemetry. Real parts only: a local Ray cluster (head on loopback, two
logical nodes with different custom resources), two real bundled tritonservers, real ZeroMQ.

The unit tests at the top need none of these; the Ray tests skip, saying why, without Ray."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from engine.cluster import (
    NodeInfo,
    PlacementError,
    TargetInfo,
    generate_run_keys,
    leaves_host,
    server_node,
    split_workers,
    uses_shared_memory,
    worker_placement,
)
from engine.config import ConfigError, config_from_dict
from engine.report import RunReport
from engine.server import ServerEndpoints
from engine.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
HAVE_RAY = importlib.util.find_spec("ray") is not None
NEEDS_RAY = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed (pip install 'triton-endurance[ray]')")
PREFIX = "triton-host:"


def _target(name: str, host: str) -> TargetInfo:
    return TargetInfo(name, ServerEndpoints(http=f"{host}:8000", grpc=f"{host}:8001",
                                            metrics=f"http://{host}:8002/metrics"), host)


# -- unit: split, placement, config, keys -----------------------------------------------------
def test_workers_are_split_by_weight_and_every_server_gets_one() -> None:
    assert split_workers(2, [1, 1]) == [0, 1]
    assert sorted(split_workers(5, [3, 1])) == [0, 0, 0, 0, 1]
    assert sorted(split_workers(3, [100, 1, 1])) == [0, 1, 2]  # at least one each
    assert split_workers(4, [1, 1])[:2] == [0, 1]  # interleaved: every server loaded from the start
    with pytest.raises(ValueError):
        split_workers(1, [1, 1])


def test_shm_workers_are_pinned_to_their_servers_node_and_network_workers_go_anywhere() -> None:
    nodes = [NodeInfo("n1", "10.0.0.1", {"CPU": 4, f"{PREFIX}gpu-box": 1}), NodeInfo("n2", "10.0.0.2", {"CPU": 4})]
    by_resource = worker_placement(_target("a", "gpu-box"), True, nodes, PREFIX)
    assert by_resource.resource == f"{PREFIX}gpu-box" and by_resource.pinned
    by_address = worker_placement(_target("b", "10.0.0.2"), True, nodes, PREFIX)
    assert by_address.node_id == "n2" and not by_address.resource
    anywhere = worker_placement(_target("c", "10.0.0.9"), False, nodes, PREFIX)
    assert not anywhere.pinned
    with pytest.raises(PlacementError, match="no Ray node runs server c"):
        server_node(_target("c", "10.0.0.9"), nodes, PREFIX)
    twins = [NodeInfo("n1", "10.0.0.1"), NodeInfo("n2", "10.0.0.1")]
    with pytest.raises(PlacementError, match="mark the server's node"):  # two nodes, one address: ambiguous
        server_node(_target("d", "10.0.0.1"), twins, PREFIX)
    assert uses_shared_memory("system") and uses_shared_memory("auto") and uses_shared_memory("none", ("cuda",))
    assert not uses_shared_memory("none", ("", "none"))


def test_cluster_and_targets_config() -> None:
    config = config_from_dict({"cluster": {"backend": "ray", "address": "auto"}, "workers": {"count": 3},
                               "targets": [{"url": "10.0.0.1:8000", "name": "a", "weight": 2},
                                           {"url": "10.0.0.2:8000", "host": "node-b"}]})
    assert config.cluster.backend == "ray" and [t.weight for t in config.targets] == [2.0, 1.0]
    with pytest.raises(ConfigError, match="leave \\[server\\] url and binary empty"):
        config_from_dict({"server": {"url": "x:8000"}, "targets": [{"url": "y:8000"}]})
    with pytest.raises(ConfigError, match="its own name"):
        config_from_dict({"targets": [{"url": "y:8000"}, {"url": "y:8000"}]})
    with pytest.raises(ConfigError, match="cluster.backend"):
        config_from_dict({"cluster": {"backend": "slurm"}})


def test_only_endpoints_that_leave_the_host_need_curve() -> None:
    assert not leaves_host("ipc:///tmp/x.sock")
    assert not leaves_host("tcp://127.0.0.1:5555") and not leaves_host("tcp://[::1]:5555")
    assert leaves_host("tcp://10.0.0.5:5555") and leaves_host("tcp://*:5555")
    keys = generate_run_keys()
    assert keys.client.server_public == keys.server.public and keys.server.allowed_client == keys.client.public
    assert (keys.server.secret.decode() not in repr(keys)
            and keys.client.secret.decode() not in repr(keys))  # never logged
    assert generate_run_keys().server.public != keys.server.public  # per run


def test_local_mode_imports_nothing_of_ray(tmp_path: Path) -> None:
    code = ("import sys, engine.coordinator, engine.cli, engine.cluster.backend as b; "
            "from engine.config import ClusterSection; b.make_backend(ClusterSection(), 'r'); "
            "print('ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# -- CURVE: a sender without the run's keys is refused ------------------------------------------
def _host_address() -> str | None:
    """An address of this host that is not loopback (telemetry that 'leaves the host')."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route's source address
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)
def test_a_sender_without_the_runs_keys_is_refused(tmp_path: Path) -> None:
    from engine.aggregator.service import Aggregator, AggregatorSpec
    from engine.config import DetectorsSection
    from engine.detectors.settings import resolve_settings
    from workers.sender import TelemetrySender
    from workers.telemetry import RecordBuffer

    host = _host_address()
    if host is None:
        pytest.skip("this host has no address beside loopback")
    keys, stranger = generate_run_keys(), generate_run_keys()
    remote = f"tcp://{host}:{_free_port(host)}"
    spec = AggregatorSpec(run_id="curve", endpoint=f"ipc://{tmp_path}/t.sock", store_path=str(tmp_path / "s.sqlite"),
                          config_json="{}", started_wall="", origin_ns=time.monotonic_ns(), run_s=60.0,
                          settings=resolve_settings(DetectorsSection(profile="smoke"), 25.0),
                          remote_endpoint=remote, curve=keys.server)
    context = zmq.Context()
    aggregator = Aggregator(spec, context)
    senders = {
        "good": TelemetrySender(remote, "good", RecordBuffer((), (), ""), keys=keys.client, context=context),
        "plain": TelemetrySender(remote, "plain", RecordBuffer((), (), ""), context=context),  # no CURVE at all
        # Knows the aggregator's public key but not the run's client key: ZAP denies it.
        "stranger": TelemetrySender(remote, "stranger", RecordBuffer((), (), ""), context=context,
                                    keys=type(keys.client)(keys.server.public, stranger.client.public,
                                                           stranger.client.secret)),
        # The run's client key against another aggregator key: the handshake fails.
        "wrong_server": TelemetrySender(remote, "wrong_server", RecordBuffer((), (), ""), context=context,
                                        keys=type(keys.client)(stranger.server.public, keys.client.public,
                                                               keys.client.secret)),
    }
    try:
        until = time.monotonic() + 5.0
        while time.monotonic() < until:
            for sender in senders.values():
                sender.event("hello", "", "", "from a sender")
            aggregator.poll(0.1)
        heard = {name for name, s in aggregator.senders.items() if s.next_seq}
    finally:
        for sender in senders.values():
            sender.close(timeout_s=0.1)
        aggregator.close()
        context.term()
    assert heard == {"good"}, heard


# -- Ray: a local cluster, two servers ----------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[tuple[object, dict[str, str]]]:
    """A local Ray cluster on this host: the head (node-a) and a second logical node (node-b),
    each marked with the custom resource of 'its' server host; small CPU and memory. The nodes
    take Ray's own address for this host (a driver that connects to 127.0.0.1 is sent to that
    address by Ray, so a head bound to 127.0.0.1 alone cannot take drivers)."""
    if not HAVE_RAY:
        pytest.skip("Ray is not installed (pip install 'triton-endurance[ray]')")
    from ray.cluster_utils import Cluster

    memory = 100 * 1024 * 1024
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=2, resources={f"{PREFIX}node-a": 1}, object_store_memory=memory,
        include_dashboard=False))
    try:
        node_b = cluster.add_node(num_cpus=2, resources={f"{PREFIX}node-b": 1},
                                  object_store_memory=memory)
        cluster.wait_for_nodes()
        yield cluster, {"node-a": cluster.head_node.node_id, "node-b": node_b.node_id}
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[object]]:
    from model_repo_gen import RepoOptions, generate_repository
    from tests.server_helpers import serve_repository

    root = tmp_path_factory.mktemp("fleet")
    generate_repository(root / "repo", RepoOptions(models=("identity_fp32",), instance_count=1))
    with serve_repository(root / "repo", root / "a") as a, serve_repository(root / "repo", root / "b") as b:
        yield [a, b]


CONFIG = """
[run]
duration = "{duration}"
seed = 11
results_dir = "{results}"

[models]
models = ["identity_fp32"]
instance_count = 1

[workers]
count = 4
concurrency = 2
shm = "system"
silent_timeout = "10s"

[scenarios.weights]
identity = 100
sequence_valid = 0
timeout = 0
crashing_client = 0
sequence_no_end = 0
sequence_valid_no_end = 0
sequence_valid_valid = 0
sequence_no_start = 0
steady_load = 0
large_tensor = 0
streaming = 0

[detectors]
window = "2s"
sample_interval = "1s"

[report]
live = "plain"

[cluster]
backend = "ray"
address = "{address}"
telemetry_host = "{telemetry_host}"
worker_cpus = 0.25

[[targets]]
name = "a"
url = "{a}"
grpc_url = "{a_grpc}"
metrics_url = "{a_metrics}"
host = "node-a"
weight = 1

[[targets]]
name = "b"
url = "{b}"
grpc_url = "{b_grpc}"
metrics_url = "{b_metrics}"
host = "node-b"
weight = 1
"""


def _start(tmp_path: Path, cluster: object, servers: list, duration: str) -> subprocess.Popen[str]:
    config = tmp_path / "ray.toml"
    config.write_text(CONFIG.format(duration=duration, results=tmp_path / "results", address=cluster.address,
                                    telemetry_host=_host_address() or "127.0.0.1",
                                    a=servers[0].http_url, b=servers[1].http_url, a_grpc=servers[0].grpc_url,
                                    b_grpc=servers[1].grpc_url, a_metrics=servers[0].metrics_url,
                                    b_metrics=servers[1].metrics_url))
    return subprocess.Popen([sys.executable, "-m", "engine", "--config", str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _read_until(process: subprocess.Popen[str], pattern: str, seen: list[str]) -> re.Match[str]:
    for line in process.stdout:  # type: ignore[union-attr]
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found
    raise AssertionError(f"the run ended before printing /{pattern}/:\n{''.join(seen)}")


def _finish(process: subprocess.Popen[str], seen: list[str], timeout: float = 180) -> str:
    try:
        rest, _ = process.communicate(timeout=timeout)
    finally:
        process.kill()
    return "".join(seen) + rest


def _nothing_left(run_dir: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _actor_pids("WorkerActor") + _actor_pids("MonitorActor"):
        time.sleep(0.5)
    assert _actor_pids("WorkerActor") + _actor_pids("MonitorActor") == [], "actors outlived the run"
    run_id = run_dir.name
    left = [p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(f"tee_{run_id}_")]
    assert left == [], left


def _actor_pids(kind: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"ray::{kind}"], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


@NEEDS_RAY
@pytest.mark.timeout(300)
def test_a_stress_run_on_ray_over_two_servers_places_shm_workers_beside_their_server(
        tmp_path: Path, ray_cluster: tuple, two_servers: list) -> None:
    cluster, node_ids = ray_cluster
    process = _start(tmp_path, cluster, two_servers, "20s")
    out = _finish(process, [], timeout=240)
    assert process.returncode == 0, out
    assert "(CURVE)" in out or _host_address() is None, out
    [run_dir] = list((tmp_path / "results").iterdir())
    store = RunStore.open(run_dir / "run.sqlite")
    try:
        placements = [e.text for e in store.events() if e.what == "placement"]
        by_target = {t: sum(w.ok for w in store.windows(target=t)) for t in ("a", "b")}
        series = store.series_names()
    finally:
        store.close()
    # Every shm worker ran on the node of the server it drove (found by the node's custom resource).
    assert len(placements) == 4, placements
    for text in placements:
        node = re.search(r"on node (\w+)", text).group(1)
        server = re.search(r"beside server (\w+)", text).group(1)
        assert node == node_ids[{"a": "node-a", "b": "node-b"}[server]], text
    assert by_target["a"] > 0 and by_target["b"] > 0, by_target  # both servers loaded, windows per server
    # A monitor actor on each server's node found its server by port and sampled its /proc.
    assert "target/a/proc/server/rss_anon" in series and "target/b/proc/server/rss_anon" in series, series
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report) == {f.name for f in dataclasses.fields(RunReport)}  # the same shape as in local mode
    assert [s["name"] for s in report["servers"]] == ["a", "b"]
    assert all(s["requests"] > 0 and s["latency"] for s in report["servers"])
    assert sum(s["requests"] for s in report["servers"]) == sum(r["requests"] for r in report["latency"])
    assert report["verdict"] == "PASS", report["verdicts"]
    _nothing_left(run_dir)


@NEEDS_RAY
@pytest.mark.timeout(300)
def test_a_killed_worker_actor_is_replaced_like_a_worker_process(
        tmp_path: Path, ray_cluster: tuple, two_servers: list) -> None:
    cluster, _ = ray_cluster
    process = _start(tmp_path, cluster, two_servers, "30s")
    seen: list[str] = []
    try:
        _read_until(process, r" requests, ", seen)  # load is flowing
        victim = _actor_pids("WorkerActor")[0]
        os.kill(victim, signal.SIGKILL)
        found = _read_until(process, r"incident: worker (\d+) exited \(Ray actor died", seen)
        out = _finish(process, seen)
    finally:
        process.kill()
    assert process.returncode == 0, out  # a replaced worker is an incident, not a failure of the server
    assert re.search(rf"incident: worker {found.group(1)} exited \(Ray actor died.*\); replaced", out), out
    [run_dir] = list((tmp_path / "results").iterdir())
    report = json.loads((run_dir / "report.json").read_text())
    assert any("died: up to about" in what for _, what in report["incidents"]), report["incidents"]
    store = RunStore.open(run_dir / "run.sqlite")
    try:
        killed_at = next(at for at, what in store.incidents() if "Ray actor died" in what)
        after = {t: sum(w.ok for w in store.windows(target=t) if w.start_s > killed_at + 3) for t in ("a", "b")}
    finally:
        store.close()
    assert after["a"] > 0 and after["b"] > 0, after  # the replacement drove its server again
    _nothing_left(run_dir)
