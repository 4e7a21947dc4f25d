"""The run's memory budget: the worst case a config can hold at once, worked out before any load.

A large input costs the host far more than its size. Measured on the bundled tritonserver 2.51
with the python backend (tools/bench/server_copy_factor.py, a zero model, input in system shm,
output requested into a shm slot, 128 and 256 MiB inputs):
- every python stub that serves a large request grows its own shared-memory pool to hold the
  input and the output (2.0x the input, one request at a time), and keeps that pool for the
  stub's life; when large requests queue for an instance, the next input arrives before the last
  output has left and the pool grows further (4.0x, read from the kernel's OOM record of a stub
  in a long.toml run that let 6 requests of 1 GiB in flight on 2 instances). So a limit of at
  most one large request per instance is charged 2.0x, a larger one 4.0x;
- while the request executes, the stub and the server hold 2.0x more in anonymous memory;
- an output returned inline (not into a shm slot) is kept by the server's gRPC front end after
  the answer, 1x per request state (5 requests in a row grew the server by 5x and kept it):
  so the engine asks for a large request's output in a shm slot, where nothing is kept.

So the budget charges: fixed, the engine's and the server's own processes (allowances below),
the host-wide region that holds the timeout scenario's constant input once, the stubs' pools, and
in every worker the large_tensor scenario's input pool (workers/plans.py echo_pool: `[scenarios]
input_pool` inputs of large_tensor_bytes, all its pools together within input_pool_bytes, one per
pool at least), held for the run: the arrays in the worker, and in system shm their slots too,
each written once; per large request in flight, the client's output slot (every large input is
constant: the timeout's host-wide region, large_tensor's pooled slots; without system shm, the
request message and the answer), plus the server's transient copies for those that execute (at
most one per instance of the target models). The identity scenario's pools (1 to 64 elements)
are within the worker's allowance. A config whose single large request cannot fit into
`[run] memory_budget` x MemAvailable (or into /dev/shm's free space) is refused before any load;
otherwise the limit is the number of large requests in flight that fit, shared by every worker
of the host (workers/host_budget.py). A remote or attached server's memory is unknown: then only
the client side is charged, and the plan says so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from model_repo_gen.spec import ModelSpec
from shm import SystemRegion, host_region_name, resolve_mode, unregister
from workers.host_budget import LARGE_REQUEST_BYTES, HostBudget
from workers.plans import TIMEOUT_INPUT, large_tensor_pool_bytes, large_tensor_targets, timeout_targets

from .config import Config, ConfigError
from .monitor.pressure import read_memory

GiB = float(1 << 30)
MiB = 1 << 20
STUB_POOL_COPIES = 2.0  # a python stub's shm pool, kept for its life: input + output...
QUEUED_STUB_POOL_COPIES = 4.0  # ...and twice that when large requests queue for its instance
SERVER_TRANSIENT_COPIES = 2.0  # anonymous memory of the stub and server while the request executes
INLINE_CLIENT_COPIES = 2.0  # without shm: the request message and the answer, in the worker
# The allowances below are the measured RSS (BENCHMARKS.md, the footprint section) with room to spare.
WORKER_ALLOWANCE = 192 * MiB  # one worker process without large inputs, and its pools
ENGINE_ALLOWANCE = 512 * MiB  # coordinator, aggregator and monitor together
SERVER_ALLOWANCE = 256 * MiB  # tritonserver itself, before any large input
STUB_ALLOWANCE = 96 * MiB  # one python backend stub and its first shm pool


class BudgetError(ConfigError):
    """The config cannot fit on this host: one line naming the keys and the numbers (a config
    error: the CLI says it and exits 2 before any load)."""


@dataclass(frozen=True)
class HostMemory:
    mem_available: int
    shm_free: int

    @classmethod
    def read(cls, shm_dir: str = "/dev/shm") -> HostMemory:
        available = read_memory().available_bytes or 0  # the monitor's own reading of /proc/meminfo
        try:
            shm_free = shutil.disk_usage(shm_dir).free
        except OSError:
            shm_free = 0
        return cls(int(available), shm_free)


@dataclass(frozen=True)
class BudgetInputs:
    """What the plan depends on, taken from the config and the generated models."""

    workers: int
    in_flight_per_worker: int  # closed loop: concurrency; open loop: max_outstanding
    shm: str  # resolved: "system", "cuda" or "none"
    local_server: bool
    models: tuple[ModelSpec, ...]
    timeout_weight: float
    timeout_input_bytes: int
    timeout_client_deadline: float
    large_tensor_weight: float
    large_tensor_bytes: int
    budget_share: float
    budget_bytes: int = 0  # an absolute budget instead of the share (0: the share)
    input_pool: int = 8  # [scenarios] input_pool: distinct inputs per pool, per worker (its default)
    input_pool_bytes: int = 64 << 20  # [scenarios] input_pool_bytes: a scenario's pools, at most (its default)


@dataclass(frozen=True)
class BudgetPlan:
    """The outcome: the host-wide limit, and the numbers behind it (said at start, kept in the run)."""

    large_bytes: int  # the largest large request's input (0: the config sends none)
    limit_requests: int  # large requests in flight at once, host-wide
    limit_bytes: int  # the same in bytes of input, as the host budget counts them
    budget_bytes: int
    fixed_bytes: int
    per_request_bytes: int
    worst_case_bytes: int  # fixed + the limit's requests in flight
    unlimited: bool  # the limit is no tighter than what the workers can have in flight anyway
    local_server: bool = True
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        if not self.large_bytes:
            return "memory budget: no large requests in this config"
        # Even a limit as high as the workers' plans binds: a lease outlives a plan the client gave up on.
        limit = f"at most {self.limit_requests} in flight host-wide" + (
            " (as many as the workers' plans)" if self.unlimited else "")
        text = (f"memory budget: large requests of {self.large_bytes / GiB:.2f} GiB, {limit}; worst case "
                f"{self.worst_case_bytes / GiB:.1f} GiB ({self.fixed_bytes / GiB:.1f} fixed + "
                f"{self.per_request_bytes / GiB:.2f} per request) of a {self.budget_bytes / GiB:.1f} GiB budget")
        return text + "".join(f"; {note}" for note in self.notes)


def plan_budget(inputs: BudgetInputs, host: HostMemory) -> BudgetPlan:
    """The limit for `inputs` on `host`, or BudgetError when even one large request cannot fit."""
    timeout_models = timeout_targets(inputs.models, inputs.timeout_client_deadline) if inputs.timeout_weight else []
    timeout_bytes = _timeout_bytes(inputs) if timeout_models else 0
    tensor_models = large_tensor_targets(inputs.models) if inputs.large_tensor_weight else []
    tensor_bytes = inputs.large_tensor_bytes if tensor_models else 0
    local = inputs.local_server
    notes = [] if local else ["the server's memory is not covered (it is not launched on this host)"]
    in_flight_max = inputs.workers * inputs.in_flight_per_worker

    fixed = ENGINE_ALLOWANCE + inputs.workers * WORKER_ALLOWANCE
    shm_fixed = 0
    pool_bytes = 0  # the stubs' pools at STUB_POOL_COPIES (they double when large requests queue)
    if local:
        stubs = sum(m.instance_count for m in inputs.models)
        fixed += SERVER_ALLOWANCE + stubs * STUB_ALLOWANCE
        for models, size in ((timeout_models, timeout_bytes), (tensor_models, tensor_bytes)):
            pool_bytes += int(sum(m.instance_count for m in models) * STUB_POOL_COPIES * size)
        fixed += pool_bytes
        shm_fixed += pool_bytes
    if timeout_bytes and inputs.shm == "system":
        # One host-wide region holds the constant input for every worker (a server elsewhere
        # cannot read it: then each worker holds its own).
        constant = timeout_bytes * (1 if local else inputs.workers)
        fixed += constant
        shm_fixed += constant
    tensor_pools = inputs.workers * large_tensor_pool_bytes(tensor_models, tensor_bytes, inputs.input_pool,
                                                            inputs.input_pool_bytes)
    fixed += tensor_pools * (2 if inputs.shm == "system" else 1)  # the arrays, and their slots
    shm_fixed += tensor_pools if inputs.shm == "system" else 0
    if tensor_bytes and tensor_bytes < LARGE_REQUEST_BYTES:  # small enough to go unlimited: all in flight
        per = tensor_bytes * (1.0 if inputs.shm == "system" else INLINE_CLIENT_COPIES)  # the output slot
        fixed += int(in_flight_max * per)
        shm_fixed += int(in_flight_max * per) if inputs.shm == "system" else 0

    large = [size for size in (timeout_bytes, tensor_bytes) if size >= LARGE_REQUEST_BYTES]
    budget = inputs.budget_bytes or int(inputs.budget_share * host.mem_available)
    if not large:
        return BudgetPlan(0, in_flight_max, 0, budget, fixed, 0, fixed, True, local, tuple(notes))
    size = max(large)
    executing = sum(m.instance_count for m in (timeout_models if size == timeout_bytes else tensor_models))
    # Per request in flight, on the client: the output slot (system shm; both large inputs are
    # constant, in slots charged above); without shm, the message and the answer.
    client = size * (INLINE_CLIENT_COPIES if inputs.shm != "system" else 1.0)
    server = size * SERVER_TRANSIENT_COPIES if local else 0.0
    shm_client = client if inputs.shm == "system" else 0.0

    queued_pools = pool_bytes * (QUEUED_STUB_POOL_COPIES / STUB_POOL_COPIES - 1.0)

    def cost(n: int) -> int:
        return int(fixed + n * client + min(n, executing) * server + (queued_pools if n > executing else 0))

    def shm_cost(n: int) -> float:
        return shm_fixed + n * shm_client + (queued_pools if n > executing else 0)

    one = cost(1)
    if one > budget:
        raise BudgetError(
            f"the config cannot fit this host's memory: one {_key_of(size, timeout_bytes)} = {size} input needs "
            f"{one / GiB:.1f} GiB at once ({fixed / GiB:.1f} GiB fixed, of which {shm_fixed / GiB:.1f} GiB of "
            f"python-stub pools and shared inputs, + {(client + server) / GiB:.1f} GiB while it is in flight), but "
            f"the budget is {budget / GiB:.1f} GiB ({_budget_key(inputs, host)}); lower the input size or "
            "[workers] count")
    if shm_fixed + shm_client > host.shm_free:
        raise BudgetError(
            f"the config cannot fit /dev/shm: one {_key_of(size, timeout_bytes)} = {size} input needs "
            f"{(shm_fixed + shm_client) / GiB:.1f} GiB of shared memory, "
            f"/dev/shm has {host.shm_free / GiB:.1f} GiB free")
    limit = 1
    while limit < in_flight_max and cost(limit + 1) <= budget and shm_cost(limit + 1) <= host.shm_free:
        limit += 1
    return BudgetPlan(size, limit, limit * size, budget, fixed, int(client + server), cost(limit),
                      limit >= in_flight_max, local, tuple(notes))


def _timeout_bytes(inputs: BudgetInputs) -> int:
    """The timeout scenario's input as sent: whole float32 elements (workers.plans.timeout_elements)."""
    return max(1, inputs.timeout_input_bytes // 4) * 4


def _budget_key(inputs: BudgetInputs, host: HostMemory) -> str:
    if inputs.budget_bytes:
        return f"[run] memory_budget_bytes = {inputs.budget_bytes}"
    return f"[run] memory_budget = {inputs.budget_share:g} of MemAvailable {host.mem_available / GiB:.1f} GiB"


def _key_of(size: int, timeout_bytes: int) -> str:
    return "[scenarios] timeout_input_bytes" if size == timeout_bytes else "[scenarios] large_tensor_bytes"


def budget_inputs(config: Config, models: tuple[ModelSpec, ...]) -> BudgetInputs:
    """The plan's inputs from a resolved config (a launched server is on this host; an attached
    server, a fleet or Ray workers elsewhere leave the server's memory out)."""
    workers = config.workers
    local = not config.server.url and not config.targets and config.cluster.backend == "local"
    weights = dict(config.scenarios.weights)
    return BudgetInputs(
        workers=workers.count,
        in_flight_per_worker=workers.concurrency if workers.load == "closed" else workers.max_outstanding,
        shm=resolve_mode(workers.shm)[0] if workers.shm != "none" else "none",
        local_server=local, models=models,
        timeout_weight=weights.get("timeout", 0), timeout_input_bytes=config.scenarios.timeout_input_bytes,
        timeout_client_deadline=config.scenarios.timeout_client_deadline,
        large_tensor_weight=weights.get("large_tensor", 0), large_tensor_bytes=config.scenarios.large_tensor_bytes,
        budget_share=config.run.memory_budget, budget_bytes=config.run.memory_budget_bytes,
        input_pool=config.scenarios.input_pool, input_pool_bytes=config.scenarios.input_pool_bytes)


BUDGET_FILE = "host_budget"  # in the run's directory: a killed run leaves nothing of it in /dev/shm


class HostSide:
    """What the budget puts on this host for a run: the shared budget file with its limit (in the
    run's directory), and the region holding the timeout scenario's constant input once for every
    worker. Removed by `close()`; after a crash the region goes with the run's shm cleanup."""

    def __init__(self, run_id: str, run_dir: Path, plan: BudgetPlan, timeout_bytes: int, shm: str) -> None:
        self.plan = plan
        self.budget = HostBudget.create(str(run_dir / BUDGET_FILE), plan.limit_bytes or 1 << 62)
        self.regions: list[SystemRegion] = []
        self.host_inputs: tuple[tuple[str, str], ...] = ()
        if timeout_bytes and shm == "system" and plan.local_server:
            region = _ones_region(host_region_name(run_id), timeout_bytes)
            self.regions.append(region)
            self.host_inputs = ((TIMEOUT_INPUT, region.name),)

    @property
    def path(self) -> str:
        return self.budget.path

    def renew_inputs(self) -> None:
        """Write the host inputs again under their names (a new server came up, and the run's shm
        cleanup removed everything of the run from /dev/shm; the new workers register them anew)."""
        for index, region in enumerate(self.regions):
            region.close()
            self.regions[index] = _ones_region(region.name, region.byte_size)

    def release_inputs(self, grpc_url: str) -> None:
        """Unregister the host inputs from the server (workers registered them; none of them owns
        them) and remove them, so the run's final cleanup finds nothing of them left behind."""
        if not self.regions:
            return
        client = grpcclient.InferenceServerClient(grpc_url)
        try:
            for region in self.regions:
                with contextlib.suppress(Exception):  # never registered, or the server is gone
                    unregister(client, region.name)
                region.close()
        finally:
            client.close()

    def in_flight_bytes(self) -> int:
        return self.budget.figures().in_flight_bytes

    def close(self) -> None:
        self.budget.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.budget.path)
        for region in self.regions:
            region.close()


def _ones_region(name: str, byte_size: int) -> SystemRegion:
    """A region holding float32 ones: what plan_timeout sends."""
    region = SystemRegion(name, byte_size)
    region.view(0, np.float32, (byte_size // 4,))[:] = 1.0
    return region


def prepare_host_side(config: Config, models: tuple[ModelSpec, ...], run_id: str, run_dir: Path,
                      host: HostMemory | None = None) -> HostSide:
    """Plan the budget (BudgetError when the config cannot fit) and make its host-side objects."""
    inputs = budget_inputs(config, models)
    plan = plan_budget(inputs, host or HostMemory.read())
    timeout = timeout_targets(models, inputs.timeout_client_deadline) if inputs.timeout_weight else []
    return HostSide(run_id, run_dir, plan, _timeout_bytes(inputs) if timeout else 0, inputs.shm)
