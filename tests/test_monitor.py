"""The monitor against the real server: its processes, its metrics, the run's /dev/shm, and the
monitor process delivering samples over real ZeroMQ."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import zmq

from engine.monitor import (
    Monitor,
    MonitorSpec,
    fetch_metrics,
    sample_process,
    start_monitor,
)
from model_repo_gen import RepoOptions, generate_repository
from workers.telemetry import KIND_EVENT, KIND_RESOURCES, unpack

from .server_helpers import RunningServer, serve_repository


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("monitor")
    generate_repository(root / "repo", RepoOptions(models=("identity_fp32", "zero_fp32"), instance_count=2,
                                                   zero_delay_ms=1.0))
    with serve_repository(root / "repo", root / "work") as running:
        yield running


def _spec(server: RunningServer, endpoint: str = "", prefixes: tuple[str, ...] = ("tee_monitortest_",)) -> MonitorSpec:
    return MonitorSpec(server_pid=server.pid, metrics_url=server.metrics_url, http_url=server.http_url,
                       run_id="monitortest", shm_prefixes=prefixes, interval_s=0.2, telemetry_endpoint=endpoint,
                       deadline_s=60.0)


def _infer(server: RunningServer, model: str, count: int) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        data = np.ones((1, 4), np.float32) if model == "identity_fp32" else np.ones(4, np.float32)
        for _ in range(count):
            tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
            tensor.set_data_from_numpy(data)
            client.infer(model, [tensor])
    finally:
        client.close()


def test_one_sample_sees_server_stubs_metrics_and_shm(server: RunningServer) -> None:
    region = Path("/dev/shm/tee_monitortest_region")
    monitor = Monitor(_spec(server))
    try:
        region.write_bytes(b"\1" * 65536)
        before = monitor.sample()
        _infer(server, "identity_fp32", 25)
        time.sleep(2.5)  # the metrics endpoint refreshes its gauges every 2 s
        after = monitor.sample()
    finally:
        region.unlink(missing_ok=True)
    assert after["proc/server/rss_anon"] > 1e6 and after["proc/server/threads"] >= 1 and after["proc/server/fds"] > 0
    stubs = sorted({name.split("/")[2] for name in after if name.startswith("proc/stub/")})
    assert stubs == ["identity_fp32_0_0", "identity_fp32_0_1", "zero_fp32_0_0", "zero_fp32_0_1"]
    for stub in stubs:
        assert after[f"proc/stub/{stub}/rss_anon"] > 1e6 and after[f"proc/stub/{stub}/pid"] > 1
    assert "proc/server/pss" in before  # the first sample reads the costly fields too
    used = sum(after[f"proc/stub/identity_fp32_0_{i}/cpu_s"] - before[f"proc/stub/identity_fp32_0_{i}/cpu_s"]
               for i in (0, 1))
    assert used > 0
    assert after["model/identity_fp32/success"] - before.get("model/identity_fp32/success", 0) == 25
    assert after["model/identity_fp32/stats_success"] - before.get("model/identity_fp32/stats_success", 0) == 25
    assert after["shm/files"] == 1 and after["shm/bytes"] >= 65536
    assert "gpu/0/used_bytes" not in after  # not measured on CPU: absent, never 0
    assert monitor.errors == []


def test_gone_process_and_unreachable_endpoint_do_not_raise() -> None:
    assert sample_process(2**22 + 12345) is None
    figures, error = fetch_metrics("http://127.0.0.1:9/metrics")
    assert figures == {} and "127.0.0.1:9" in error


def test_monitor_process_sends_samples_and_sees_a_stub_die(server: RunningServer, tmp_path: Path) -> None:
    context = zmq.Context.instance()
    pull = context.socket(zmq.PULL)
    endpoint = f"ipc://{tmp_path}/monitor.sock"
    pull.bind(endpoint)
    process = start_monitor(_spec(server, endpoint))
    try:
        def receive_until(predicate, timeout: float = 20.0) -> list:
            got, deadline = [], time.monotonic() + timeout
            while time.monotonic() < deadline:
                if pull.poll(200):
                    message = unpack(pull.recv())
                    got.append(message)
                    if predicate(message):
                        return got
            raise AssertionError(f"not seen in {timeout} s: {[m.kind for m in got]}")

        first = receive_until(lambda m: m.kind == KIND_RESOURCES)[-1]
        assert first.sender == "monitor" and "proc/server/rss_anon" in first.body["samples"]
        victim = int(first.body["samples"]["proc/stub/zero_fp32_0_1/pid"])
        os.kill(victim, signal.SIGKILL)
        gone = receive_until(lambda m: m.kind == KIND_EVENT and m.body["what"] == "process_gone")[-1]
        assert "zero_fp32_0_1" in gone.body["text"] and str(victim) in gone.body["text"]
        process.terminate()
        process.join(10)
        assert process.exitcode == 0
    finally:
        if process.is_alive():
            process.kill()
        pull.close(0)
