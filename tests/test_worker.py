"""A real worker process (spawn) against the real server: every scenario by weight, heartbeats,
nothing lost, and the same seed draws the same scenarios."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import zmq

from engine.config import DEFAULT_WEIGHTS, ScenariosSection
from model_repo_gen import RepoOptions, generate_repository
from model_repo_gen.options import HEALTHY_MODELS
from shm import cleanup, registered_regions
from tests.server_helpers import serve_repository, successes, telemetry_sink
from workers.telemetry import (
    KIND_BATCH,
    KIND_EVENT,
    KIND_HEARTBEAT,
    STATUS_OK,
    decode_batch,
    unpack,
)
from workers.worker import WorkerSpec, replay_scenarios, scenario_table, start_worker

pytestmark = pytest.mark.timeout(240)

OPTIONS = RepoOptions(models=HEALTHY_MODELS, instance_count=2, zero_delay_ms=300, slow_zero_delay_ms=600,
                      sequence_idle_timeout=2.0)
SETTINGS = ScenariosSection(timeout_input_bytes=1 << 16, large_tensor_bytes=1 << 18, sequence_length_mean=5,
                            sequence_length_stddev=2, sequence_deadline=10.0, crashing_client_lifetime=0.5)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("worker")
    specs = generate_repository(root / "repo", OPTIONS)
    with serve_repository(root / "repo", root / "work") as running:
        yield running, specs


def _spec(running, specs, endpoint: str, worker_id: int = 0, deadline_s: float = 12.0, **kw) -> WorkerSpec:
    values = dict(worker_id=worker_id, run_id="testrun-worker", seed=1234, id_base=1 + worker_id * 1_048_576,
                  id_block=1_048_576, grpc_url=running.grpc_url, http_url=running.http_url, protocol="grpc",
                  concurrency=2, models=tuple(specs), scenarios=SETTINGS, telemetry_endpoint=endpoint,
                  deadline_s=deadline_s)
    values.update(kw)
    return WorkerSpec(**values)


def _collect(socket: zmq.Socket, process, timeout: float) -> list:
    messages = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if socket.poll(200):
            messages.append(unpack(socket.recv()))
        elif not process.is_alive():
            while socket.poll(300):
                messages.append(unpack(socket.recv()))
            break
    return messages


def _run_to_end(spec: WorkerSpec, socket: zmq.Socket) -> tuple[list, int | None]:
    """Start a worker, gather everything it sends until it exits; (messages, exit code)."""
    process = start_worker(spec)
    try:
        messages = _collect(socket, process, 60)
        process.join(10)
    finally:
        if process.is_alive():
            process.kill()
    return messages, process.exitcode


@pytest.mark.parametrize("shm_mode", ["none", "system"])
def test_worker_runs_every_scenario_and_loses_nothing(server, tmp_path: Path, shm_mode: str) -> None:
    running, specs = server
    before = successes(running.metrics_url)
    with telemetry_sink(tmp_path) as (endpoint, pull):
        messages, exitcode = _run_to_end(_spec(running, specs, endpoint, shm_mode=shm_mode), pull)
    assert exitcode == 0
    after = successes(running.metrics_url)
    beats = [m for m in messages if m.kind == KIND_HEARTBEAT]
    events = [m for m in messages if m.kind == KIND_EVENT]
    batches = [decode_batch(m) for m in messages if m.kind == KIND_BATCH]
    assert len(beats) >= 8  # one a second over the 12 s run
    assert [m.seq for m in messages] == list(range(len(messages)))  # numbered, none lost
    plans = beats[-1].body["plans"]
    failed = {k: v for k, v in plans.items() if v[1]}
    assert failed == {}, [e.body["text"] for e in events]
    ran = {k for k, v in plans.items() if v[0]}
    assert {"sequence_valid", "steady_load", "identity"} <= ran  # the heaviest weights surely drawn
    status = np.concatenate([b.columns["status"] for b in batches])
    assert len(status) == sum(v[2] for v in plans.values())  # every request recorded
    ok = int((status == STATUS_OK).sum())
    # every recorded success is one the server counted; timed-out requests finish later on the server,
    # and the crashing client's requests are the server's too (counted there, not by the worker)
    assert ok <= after - before
    assert beats[-1].body["records_dropped"] == 0
    # A worker that exits leaves nothing registered on the server and nothing in /dev/shm.
    assert not [n for n in os.listdir("/dev/shm") if n.startswith("tee_testrun-worker_")]
    client = grpcclient.InferenceServerClient(running.grpc_url)
    assert not [r for r in registered_regions(client, "system") if r.name.startswith("tee_testrun-worker_")]
    client.close()


def test_killed_shm_worker_is_cleaned_up(server, tmp_path: Path) -> None:
    running, specs = server
    client = grpcclient.InferenceServerClient(running.grpc_url)
    with telemetry_sink(tmp_path) as (endpoint, pull):
        process = start_worker(_spec(running, specs, endpoint, worker_id=5, deadline_s=300.0, shm_mode="system"))
        try:
            assert pull.poll(30_000), "the worker never reported"
            time.sleep(1.0)
            os.kill(process.pid, signal.SIGKILL)
            process.join(10)
            left = [n for n in os.listdir("/dev/shm") if n.startswith("tee_testrun-worker_w5_")]
            assert left, "the killed worker held regions"
            report = cleanup("testrun-worker", client, worker_id=5)
            assert set(left) <= set(report.unlinked) and report.unregistered
            assert not [n for n in os.listdir("/dev/shm") if n.startswith("tee_testrun-worker_w5_")]
            assert not [r for r in registered_regions(client, "system")
                        if r.name.startswith("tee_testrun-worker_w5_")]
        finally:
            if process.is_alive():
                process.kill()
            client.close()


def test_sigterm_stops_the_worker_gracefully(server, tmp_path: Path) -> None:
    running, specs = server
    identity_only = ScenariosSection(weights={**{k: 0 for k in DEFAULT_WEIGHTS}, "identity": 1})
    with telemetry_sink(tmp_path) as (endpoint, pull):
        process = start_worker(_spec(running, specs, endpoint, worker_id=1, deadline_s=300.0, scenarios=identity_only))
        try:
            assert pull.poll(30_000), "the worker never reported"
            time.sleep(1.0)
            os.kill(process.pid, signal.SIGTERM)
            messages = _collect(pull, process, 30)
            process.join(10)
        finally:
            if process.is_alive():
                process.kill()
    assert process.exitcode == 0
    assert messages[-1].kind == KIND_HEARTBEAT  # the last word is a final heartbeat with the totals
    assert messages[-1].body["plans"]["identity"][0] > 10


def test_the_run_replays_from_its_seed(server, tmp_path: Path) -> None:
    """With one lane, the scenarios of the recorded requests are exactly those the seed predicts."""
    running, specs = server
    with telemetry_sink(tmp_path) as (endpoint, pull):
        spec = _spec(running, specs, endpoint, worker_id=2, deadline_s=8.0, concurrency=1)
        messages, _ = _run_to_end(spec, pull)
    batches = [decode_batch(m) for m in messages if m.kind == KIND_BATCH]
    names = batches[0].scenarios
    recorded = [names[c] for b in batches for c in b.columns["scenario"]]
    runs = [name for i, name in enumerate(recorded) if i == 0 or recorded[i - 1] != name]
    predicted = replay_scenarios(spec, lane=0, count=500)
    predicted_runs = [name for i, name in enumerate(predicted) if i == 0 or predicted[i - 1] != name]
    assert len(runs) >= 5
    assert runs[:-1] == predicted_runs[:len(runs) - 1]  # the last run may have been cut by the deadline


def test_a_weighted_scenario_without_its_model_is_refused_at_start() -> None:
    from model_repo_gen import build_specs
    from workers.plans import PlanError

    only_identity = build_specs(RepoOptions(models=("identity_fp32",)))
    with pytest.raises(PlanError, match="sequence"):
        scenario_table({"identity": 1, "sequence_valid": 1}, only_identity, SETTINGS)
    names, _ = scenario_table({"identity": 1, "sequence_valid": 0}, only_identity, SETTINGS)
    assert names == ("identity",)


def test_the_start_up_probe_draws_plans_without_building_whole_input_pools() -> None:
    """scenario_table draws one plan per weighted scenario to refuse the impossible ones at start;
    it must not make a full large_tensor pool (input_pool inputs of up to 16 MiB) only to drop it."""
    import tracemalloc

    from model_repo_gen import build_specs

    specs = build_specs(RepoOptions(models=("identity_fp32",)))
    settings = dataclasses.replace(SETTINGS, large_tensor_bytes=4 << 20, input_pool=8, input_pool_bytes=64 << 20)
    tracemalloc.start()
    try:
        scenario_table({"large_tensor": 1, "identity": 1}, specs, settings)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * (4 << 20), f"{peak / (1 << 20):.1f} MiB"  # one 4 MiB input (and its draw), not eight


def test_open_loop_keeps_its_schedule(server, tmp_path: Path) -> None:
    """Poisson arrivals at 40 plans/s for 6 s: about 240 plans, whatever each one takes."""
    running, specs = server
    weights = {**{k: 0 for k in DEFAULT_WEIGHTS}, "identity": 3, "sequence_valid": 1}
    with telemetry_sink(tmp_path) as (endpoint, pull):
        spec = _spec(running, specs, endpoint, worker_id=4, deadline_s=6.0, load="poisson", rate=40.0,
                     scenarios=ScenariosSection(weights=weights, sequence_length_mean=3, sequence_length_stddev=1))
        messages, _ = _run_to_end(spec, pull)
    last = [m for m in messages if m.kind == KIND_HEARTBEAT][-1].body
    plans = sum(v[0] for v in last["plans"].values())
    failed = sum(v[1] for v in last["plans"].values())
    assert 160 <= plans <= 330, plans  # Poisson count over 6 s at 40/s: 240 +- 4 sigma
    assert failed == 0 and last["schedule_skipped"] == 0
