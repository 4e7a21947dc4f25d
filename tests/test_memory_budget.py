"""The run's memory budget: the plan a config gets on a host, the refusal of one that cannot fit,
the host-wide limit shared by real processes, and a real run whose large requests would overlap."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.config import load_config, resolve_config_path
from engine.memory_budget import BudgetError, BudgetInputs, HostMemory, budget_inputs, plan_budget
from engine.store import RunStore
from model_repo_gen.catalog import build_specs
from tests.server_helpers import only_weights
from workers.host_budget import HostBudget

ROOT = Path(__file__).resolve().parents[1]
HOST_24_GIB = HostMemory(mem_available=23 << 30, shm_free=24 << 30)  # the host long.toml must run on


def _long_inputs() -> BudgetInputs:
    config = load_config(resolve_config_path("long"))
    return budget_inputs(config, build_specs(config.models))


def test_long_toml_fits_a_24_gib_host_with_its_1_gib_inputs_in_flight_one_per_instance() -> None:
    inputs = _long_inputs()
    assert inputs.timeout_input_bytes == 1 << 30 and inputs.local_server and inputs.shm in ("system", "cuda")
    plan = plan_budget(dataclasses.replace(inputs, shm="system"), HOST_24_GIB)
    assert plan.large_bytes == 1 << 30
    # Two instances of the timeout's zero model: two at once; a third would queue and double the
    # stubs' pools, which does not fit 80 % of 23 GiB.
    assert plan.limit_requests == 2 and plan.limit_bytes == 2 << 30 and not plan.unlimited
    assert plan.worst_case_bytes <= plan.budget_bytes == int(0.8 * (23 << 30))
    assert "at most 2 in flight host-wide" in plan.describe()


def test_a_larger_host_lets_more_through_and_a_remote_server_is_not_charged() -> None:
    inputs = dataclasses.replace(_long_inputs(), shm="system")
    big = plan_budget(inputs, HostMemory(256 << 30, 256 << 30))
    assert big.limit_requests == 8 and big.unlimited  # every worker's one plan in flight fits
    remote = plan_budget(dataclasses.replace(inputs, local_server=False), HOST_24_GIB)
    assert remote.limit_requests > 2 and "not covered" in remote.describe()


def test_a_config_whose_one_large_request_cannot_fit_is_refused_naming_keys_and_numbers() -> None:
    inputs = dataclasses.replace(_long_inputs(), shm="system", timeout_input_bytes=16 << 30)
    with pytest.raises(BudgetError) as refused:
        plan_budget(inputs, HOST_24_GIB)
    text = str(refused.value)
    assert "\n" not in text
    assert "[scenarios] timeout_input_bytes = 17179869184" in text and "[run] memory_budget = 0.8" in text
    assert "18.4 GiB" in text  # the budget, in numbers
    absolute = dataclasses.replace(inputs, timeout_input_bytes=1 << 30, budget_bytes=4 << 30)
    with pytest.raises(BudgetError, match=r"\[run\] memory_budget_bytes = 4294967296"):
        plan_budget(absolute, HOST_24_GIB)
    with pytest.raises(BudgetError, match="/dev/shm"):
        plan_budget(dataclasses.replace(inputs, timeout_input_bytes=1 << 30), HostMemory(64 << 30, 2 << 30))


def test_a_config_without_large_requests_gets_no_limit() -> None:
    config = load_config(resolve_config_path("smoke"))
    plan = plan_budget(budget_inputs(config, build_specs(config.models)), HOST_24_GIB)
    assert plan.large_bytes == 0 and plan.unlimited
    assert plan.describe() == "memory budget: no large requests in this config"


@pytest.mark.timeout(120)
def test_the_cli_refuses_a_config_that_cannot_fit_before_any_load(tmp_path: Path) -> None:
    config = tmp_path / "huge.toml"
    config.write_text(f'[run]\nresults_dir = "{tmp_path / "results"}"\n[scenarios]\ntimeout_input_bytes = {1 << 40}\n')
    done = subprocess.run([sys.executable, "-m", "engine", "--config", str(config)], cwd=ROOT, capture_output=True,
                          text=True, timeout=100)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "timeout_input_bytes = 1099511627776" in lines[0] and "memory_budget" in lines[0]
    assert "server:" not in done.stdout  # refused before a server was started
    [run_dir] = list((tmp_path / "results").iterdir())
    assert not (run_dir / "host_budget").exists()
    assert not [p for p in Path("/dev/shm").iterdir() if p.name.startswith(f"tee_{run_dir.name}")]


# -- the host-wide limit, shared by real processes ---------------------------------------------------
def _hold_leases(path: str, nbytes: int, count: int, hold_s: float, ready: multiprocessing.Event) -> None:
    budget = HostBudget.open(path)
    for _ in range(count):
        assert budget.try_acquire(nbytes, hold_s) is not None
    ready.set()
    time.sleep(60)  # killed by the test


@pytest.mark.timeout(60)
def test_leases_are_host_wide_and_a_dead_holders_leases_expire(tmp_path: Path) -> None:
    path = str(tmp_path / "budget")
    budget = HostBudget.create(path, limit_bytes=3 << 20)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_leases, args=(path, 1 << 20, 2, 2.0, ready))
    holder.start()
    try:
        assert ready.wait(30)
        assert budget.figures().in_flight_bytes == 2 << 20
        mine = budget.try_acquire(1 << 20, 30.0)
        assert mine is not None
        assert budget.try_acquire(1 << 20, 30.0) is None  # the limit counts the other process's leases
        holder.kill()
        holder.join(10)
        time.sleep(2.1)  # its leases expire: a worker that died frees the budget without anyone's help
        again = budget.try_acquire(1 << 20, 30.0)
        assert again is not None and budget.figures().in_flight_bytes == 2 << 20
        budget.release(mine)
        budget.release(again)
        # One request larger than the whole limit goes alone, never beside another.
        alone = budget.try_acquire(8 << 20, 30.0)
        assert alone is not None and budget.try_acquire(1, 30.0) is None
        budget.release(alone)
        budget.set_pressure(True)
        assert budget.try_acquire(1, 30.0) is None
        budget.set_pressure(False)
        figures = budget.figures()
        assert figures.peak_bytes == 8 << 20 and figures.granted == 5 and not figures.pressure
    finally:
        holder.kill()
        budget.close()


# -- a real run: two workers whose large plans would overlap -------------------------------------------
RUN = """
[run]
duration = "25s"
seed = 3
results_dir = "{results}"
memory_budget_bytes = {budget}

[models]
models = ["zero_fp32", "identity_fp32"]
instance_count = 1
zero_delay_ms = 400.0

[workers]
count = 2
shm = "system"

[scenarios]
timeout_input_bytes = {size}

{weights}
[detectors]
profile = "smoke"
window = "5s"
sample_interval = "1s"

[report]
live = "plain"
"""
SIZE = 64 << 20


def _large_files(run_prefix: str) -> list[tuple[str, int]]:
    found = []
    for entry in os.scandir("/dev/shm"):
        if entry.name.startswith(run_prefix):
            try:
                size = entry.stat().st_size
            except OSError:
                continue
            if size >= SIZE:
                found.append((entry.name, size))
    return found


@pytest.mark.timeout(240)
def test_two_workers_large_plans_are_serialized_under_the_limit(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    weights = only_weights(timeout=100, identity=20)
    config.write_text(RUN.format(results=tmp_path / "results", budget=1 << 62, size=SIZE, weights=weights))
    loaded = load_config(config)
    # Charge exactly what the planner charges, and give the run room for one large request at a time.
    free = plan_budget(budget_inputs(loaded, build_specs(loaded.models)), HostMemory(1 << 50, 1 << 50))
    budget = free.fixed_bytes + int(1.5 * free.per_request_bytes)
    config.write_text(RUN.format(results=tmp_path / "results", budget=budget, size=SIZE, weights=weights))
    process = subprocess.Popen([sys.executable, "-m", "engine", "--config", str(config)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_outputs = 0
    stop = threading.Event()

    def watch() -> None:  # the output slots the workers have in /dev/shm, as the kernel sees them
        nonlocal peak_outputs
        while not stop.is_set():
            runs = list((tmp_path / "results").iterdir()) if (tmp_path / "results").exists() else []
            if runs:
                files = _large_files(f"tee_{runs[0].name}_w")
                worker_outputs = [name for name, _ in files if "_w999999_" not in name]
                peak_outputs = max(peak_outputs, len(worker_outputs))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        output, _ = process.communicate(timeout=200)
    finally:
        process.kill()
        stop.set()
        watcher.join(5)
    assert process.returncode == 0, output
    assert "at most 1 in flight host-wide" in output
    [run_dir] = list((tmp_path / "results").iterdir())
    store = RunStore.open(run_dir / "run.sqlite")
    try:
        _, peak = store.series("budget/peak_bytes")
        _, waits = store.series("budget/waits")
        _, granted = store.series("budget/granted")
    finally:
        store.close()
    assert len(peak) and peak.max() <= SIZE  # never two 64 MiB requests in flight at once
    assert granted.max() >= 4 and waits.max() >= 1  # both workers sent them, and one waited for the other
    assert peak_outputs == 1, f"{peak_outputs} large output slots existed at once"
    timeout_row = next(line for line in output.splitlines() if line.startswith("timeout "))
    assert timeout_row.split("|")[1].strip() == "0"  # every one got its Deadline Exceeded
    assert "verdict: PASS" in output
    assert not [p for p in Path("/dev/shm").iterdir() if p.name.startswith(f"tee_{run_dir.name}")]


def test_the_large_tensor_pool_is_charged_once_per_worker_and_its_requests_their_output_slot() -> None:
    """large_tensor's inputs come from a pool per worker (its arrays, and their system shm slots):
    each request in flight adds only its output slot."""
    config = load_config(resolve_config_path("long"))
    inputs = dataclasses.replace(budget_inputs(config, build_specs(config.models)), shm="system", timeout_weight=0,
                                 in_flight_per_worker=4)
    without = plan_budget(dataclasses.replace(inputs, large_tensor_weight=0), HOST_24_GIB)
    pooled = plan_budget(inputs, HOST_24_GIB)
    pool = 8 * 4 << 20  # 8 inputs of 4 MiB: within input_pool_bytes (64 MiB); one pool (identity_fp32)
    stubs = 2 * 2 * (4 << 20)  # identity_fp32's two python stubs keep an input and an output each
    assert pooled.fixed_bytes - without.fixed_bytes == inputs.workers * (2 * pool + 4 * (4 << 20)) + stubs
    capped = plan_budget(dataclasses.replace(inputs, input_pool_bytes=9 << 20), HOST_24_GIB)
    assert capped.fixed_bytes - without.fixed_bytes == inputs.workers * (2 * (8 << 20) + 4 * (4 << 20)) + stubs
