"""One worker process: draws scenarios by weight from its seeded generator and runs them,
`concurrency` at a time, until its deadline or the stop signal; reports, never prints."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import multiprocessing
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from model_repo_gen.spec import ModelSpec
from shm import ShmPool

from . import event_loop
from .answer_check import DEFAULT_FRACTION, DEFAULT_PAGES, AnswerCheck
from .executor import Executor, PlanOutcome
from .heap import ReleaseTimer
from .host_budget import HostBudget
from .plans import (
    PLANNERS,
    PROCESS_SCENARIOS,
    IdSource,
    Plan,
    PlanContext,
    PlanError,
    ScenarioSettings,
    plan_identity,
)
from .process_scenarios import SteadyLoadController, run_crashing_client, run_steady_load
from .process_setup import enter_process, spawn
from .sender import ClientKeys, TelemetrySender
from .telemetry import Heartbeat, RecordBuffer
from .user_load import ResolvedLoad, UserPlanner

HEARTBEAT_INTERVAL_S = 1.0
FLUSH_TICK_S = 0.1
UNREACHABLE_FIRST_PAUSE_S = 0.05
UNREACHABLE_LONGEST_PAUSE_S = 1.0
# How the clients say that no server listens (gRPC; HTTP through gevent, and the workers' own
# client, which says it in aiohttp's words).
_UNREACHABLE_MARKERS = ("StatusCode.UNAVAILABLE", "Connection refused", "ConnectionRefusedError",
                        "Cannot connect to host")


def server_unreachable(failure: str) -> bool:
    """True when a plan failed because nothing answered at the server's address."""
    return any(marker in failure for marker in _UNREACHABLE_MARKERS)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, picklable: it crosses into a spawned process."""

    worker_id: int
    run_id: str
    seed: int  # the run seed; the worker derives its own streams from (seed, worker_id, lane)
    id_base: int  # first correlation id of this worker's block
    id_block: int
    grpc_url: str
    http_url: str
    protocol: str
    concurrency: int
    models: tuple[ModelSpec, ...]
    scenarios: ScenarioSettings  # the [scenarios] section: weights and knobs
    telemetry_endpoint: str
    deadline_s: float  # seconds from the worker's start until it stops on its own
    shm_mode: str = "none"  # none, system, cuda or auto: where request tensors travel
    cuda_device: int = 0  # the GPU its CUDA regions live on ([workers] cuda_device)
    user_loads: tuple[ResolvedLoad, ...] = ()  # [[load]] entries, resolved against the server
    load: str = "closed"  # closed, constant or poisson
    rate: float = 10.0  # open loop: plans started per second
    max_outstanding: int = 256  # open loop: in flight before the schedule skips
    target: str = ""  # the server this worker drives, by name, in a fleet ("" with one server)
    telemetry_keys: ClientKeys | None = None  # CURVE client keys when the telemetry endpoint leaves the host
    event_loop: str = "uvloop"  # uvloop or asyncio (workers/event_loop.py)
    budget_path: str = ""  # the host-wide budget of large requests (workers/host_budget.py); "" = none
    host_inputs: tuple[tuple[str, str], ...] = ()  # (key, region name): constant inputs shared by the host
    validate: str = "all"  # all, pages or fraction: how much of each answer is compared (workers/answer_check.py)
    validate_pages: int = DEFAULT_PAGES
    validate_fraction: float = DEFAULT_FRACTION


def planners_for(user_loads: tuple[ResolvedLoad, ...]) -> dict[str, Callable[[PlanContext], Plan]]:
    """The built-in request planners plus one per `[[load]]` entry."""
    return {**PLANNERS, **{load.scenario: UserPlanner(load) for load in user_loads}}


def all_weights(spec: WorkerSpec) -> dict[str, int]:
    """The [scenarios] weights and one per [[load]] entry."""
    return {**dict(spec.scenarios.weights), **{load.scenario: load.weight for load in spec.user_loads}}


class _OneInputPerPool:
    """The run's scenario settings but for input pools of one input: the start-up probe only checks
    that each weighted scenario can draw a plan, and its pools are thrown away (a large_tensor pool
    is input_pool inputs of up to 16 MiB)."""

    input_pool = 1

    def __init__(self, settings: ScenarioSettings) -> None:
        self._settings = settings

    def __getattr__(self, name: str) -> Any:
        return getattr(self._settings, name)


def scenario_table(weights: dict[str, int], models: tuple[ModelSpec, ...], settings: ScenarioSettings,
                   user_loads: tuple[ResolvedLoad, ...] = ()) -> tuple[tuple[str, ...], np.ndarray]:
    """(scenarios with a weight, their draw probabilities). Raises PlanError when a weighted
    scenario cannot run with these models: a start-up error, not a stream of failures."""
    names = tuple(name for name, weight in weights.items() if weight > 0)
    if not names:
        raise PlanError("no scenario has a weight above zero")
    planners = planners_for(user_loads)
    probe = PlanContext(np.random.default_rng(0), _OneInputPerPool(settings), IdSource(1, 1, 0), models)
    for name in names:
        planner = planners.get(name) or PLANNERS["identity"]  # process scenarios drive an identity model
        try:
            planner(probe)
        except PlanError as exc:
            raise PlanError(f"{exc}; set [scenarios.weights] {name} = 0 or add the model to [models]") from None
    total = float(sum(weights[n] for n in names))
    return names, np.array([weights[n] / total for n in names])


def replay_draw(name: str, ctx: PlanContext, planners: dict[str, Callable[[PlanContext], Plan]]) -> None:
    """Consume the generator exactly as running scenario `name` does, without running it."""
    if name in planners:
        planners[name](ctx)
        return
    plan_identity(ctx)  # both process scenarios pick their identity model first
    if name == "steady_load":
        ctx.rng.integers(0, 2**63)


def replay_scenarios(spec: WorkerSpec, lane: int, count: int) -> list[str]:
    """The first `count` scenarios that lane `lane` of this worker draws: runs replay from the seed."""
    names, probabilities = shared_table(*scenario_table(all_weights(spec), spec.models, spec.scenarios,
                                                        spec.user_loads), own_schedule(spec))
    planners = planners_for(spec.user_loads)
    rng = lane_generator(spec, lane)
    ctx = PlanContext(rng, spec.scenarios, IdSource(spec.id_base, spec.id_block, spec.worker_id, spec.seed),
                      spec.models)
    drawn = []
    draw = ScenarioDraw(probabilities)
    for _ in range(count):
        name = names[draw(rng)]
        replay_draw(name, ctx, planners)
        drawn.append(name)
    return drawn


def own_schedule(spec: WorkerSpec) -> tuple[ResolvedLoad, ...]:
    """[[load]] entries that keep a schedule of their own (open loop), outside the lanes' draw."""
    return tuple(load for load in spec.user_loads if load.load in ("constant", "poisson"))


def shared_table(names: tuple[str, ...], probabilities: np.ndarray,
                 own: tuple[ResolvedLoad, ...]) -> tuple[tuple[str, ...], np.ndarray]:
    """The scenarios the lanes draw: all weighted ones but those on their own schedule."""
    skip = {load.scenario for load in own}
    kept = [(n, p) for n, p in zip(names, probabilities) if n not in skip]
    total = sum(p for _, p in kept)
    return tuple(n for n, _ in kept), np.array([p / total for _, p in kept]) if kept else np.zeros(0)


_OWN_RUNNERS = frozenset({"crashing_client", "steady_load"})


class ScenarioDraw:
    """Draws a scenario index as `rng.choice(len(p), p=p)` does, from the same single uniform
    number (so runs replay exactly as before), without choice()'s per-call checks and cumulative
    sum, most of its cost per draw (bisect on a list of the same doubles is searchsorted(side=
    "right") without numpy's call overhead)."""

    def __init__(self, probabilities: np.ndarray) -> None:
        cdf = np.cumsum(probabilities, dtype=np.float64)
        self._cdf: list[float] = (cdf / cdf[-1] if len(cdf) else cdf).tolist()
        self._only = len(self._cdf) == 1  # one scenario: nothing to draw (as `below` for one choice)

    def __call__(self, rng: np.random.Generator) -> int:
        return 0 if self._only else bisect.bisect_right(self._cdf, rng.random())


def lane_generator(spec: WorkerSpec, lane: int) -> np.random.Generator:
    # One generator per lane: each lane's scenario sequence replays exactly from the run seed.
    return np.random.default_rng([spec.seed, spec.worker_id, lane])


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.scenarios, self.probabilities = scenario_table(all_weights(spec), spec.models, spec.scenarios,
                                                            spec.user_loads)
        self.planners = planners_for(spec.user_loads)
        self.own_schedule = own_schedule(spec)
        # drawn by the lanes (or the worker's own open loop)
        self.shared_names, self.shared_p = shared_table(self.scenarios, self.probabilities, self.own_schedule)
        self.codes = {name: i for i, name in enumerate(self.scenarios)}
        self.models = {m.name: m for m in (*spec.models, *(load.spec for load in spec.user_loads))}
        self.model_codes = {name: i for i, name in enumerate(self.models)}
        self.sender = TelemetrySender(spec.telemetry_endpoint, f"worker-{spec.worker_id}",
                                      RecordBuffer(tuple(self.models), self.scenarios, spec.protocol,
                                                   target=spec.target),
                                      keys=spec.telemetry_keys)
        self.ids = IdSource(spec.id_base, spec.id_block, spec.worker_id, spec.seed)  # the pools' contents too
        self.totals: dict[str, list[int]] = {name: [0, 0, 0] for name in self.scenarios}
        settings = spec.scenarios
        self.steady = SteadyLoadController(settings.steady_load_queue_low, settings.steady_load_queue_high,
                                           settings.steady_load_max_concurrency)
        self._stop = asyncio.Event()
        self._lateness_ns = 0
        self._loop_lag_ns = 0  # how late the flush tick woke at most since the last heartbeat
        self._skipped = 0

    def stop(self) -> None:
        self._stop.set()

    def _open_pools(self) -> dict[str, ShmPool]:
        """One shared-memory pool per mode in use (the worker's, and any a [[load]] entry asks
        for), each registered through a sync client of the worker's protocol."""
        modes = {self.spec.shm_mode} | {load.shm for load in self.spec.user_loads if load.shm}
        pools: dict[str, ShmPool] = {}
        for mode in sorted(modes - {"none"}):
            if self.spec.protocol == "http":
                client: Any = httpclient.InferenceServerClient(self.spec.http_url)
            else:
                client = grpcclient.InferenceServerClient(self.spec.grpc_url)
            pools[mode] = ShmPool(client, self.spec.run_id, self.spec.worker_id, mode=mode,
                                  device_id=self.spec.cuda_device)
            if pools[mode].fallback_reason:
                self.sender.event("shm_fallback", "", "", pools[mode].fallback_reason)
        return pools

    async def run(self) -> None:
        deadline = time.monotonic() + self.spec.deadline_s
        pools = self._open_pools()
        budget = HostBudget.open(self.spec.budget_path) if self.spec.budget_path else None
        try:
            await self._run(deadline, pools, budget)
        finally:
            for pool in pools.values():
                pool.close(raise_errors=False)
                pool.client.close()
            if budget is not None:
                budget.close()  # leases still held expire on their own: the server may hold their requests
        self.sender.close()

    async def _run(self, deadline: float, pools: dict[str, ShmPool], budget: HostBudget | None) -> None:
        async with Executor(protocol=self.spec.protocol, grpc_url=self.spec.grpc_url, http_url=self.spec.http_url,
                            models=self.models, model_codes=self.model_codes, sender=self.sender,
                            pool=pools.get(self.spec.shm_mode), pools=pools, budget=budget,
                            host_inputs=dict(self.spec.host_inputs),
                            check=AnswerCheck(self.spec.validate, self.spec.validate_pages,
                                              self.spec.validate_fraction,
                                              seed=(self.spec.seed, self.spec.worker_id))) as executor:
            self.executor = executor
            executor.stopping = lambda: self._stop.is_set() or time.monotonic() >= deadline
            lanes = []
            if len(self.shared_names):
                if self.spec.load == "closed":
                    lanes = [asyncio.create_task(self._lane(lane, deadline)) for lane in range(self.spec.concurrency)]
                else:
                    lanes = [asyncio.create_task(self._open_loop(deadline, self.shared_names, self.shared_p,
                                                                 self.spec.rate, self.spec.load, 0))]
            # [[load]] entries with a load shape of their own keep their own schedule.
            for k, load in enumerate(self.own_schedule):
                lanes.append(asyncio.create_task(self._open_loop(deadline, (load.scenario,), np.ones(1),
                                                                 load.rate or self.spec.rate, load.load, 1 + k)))
            beat = asyncio.create_task(self._heartbeats())
            try:
                await asyncio.gather(*lanes)
            finally:
                beat.cancel()
                self._heartbeat()

    async def _lane(self, lane: int, deadline: float) -> None:
        rng = lane_generator(self.spec, lane)
        ctx = PlanContext(rng, self.spec.scenarios, self.ids, self.spec.models)
        pause = 0.0
        draw = ScenarioDraw(self.shared_p)
        names, planners, codes, run = self.shared_names, self.planners, self.codes, self.executor.run
        task = asyncio.current_task()
        only = names[0] if len(names) == 1 else ""  # nothing to draw (ScenarioDraw draws nothing either)
        while not self._stop.is_set() and time.monotonic() < deadline:
            name = only or names[draw(rng)]
            # _run_one's work, inline: one coroutine frame less to suspend and resume per request
            try:
                if name in _OWN_RUNNERS:
                    outcome = await self._run_own(name, ctx)
                else:
                    outcome = await run(planners[name](ctx), codes[name], 0, task)
            except Exception as exc:
                outcome = self._broke(name, exc)
            self._count(name, outcome)
            if outcome.failed and server_unreachable(outcome.failure):
                # Nobody listens (the server died or restarts): a closed loop would spin through
                # thousands of instant refusals. Each is still recorded; the lane only slows down.
                pause = min(max(2 * pause, UNREACHABLE_FIRST_PAUSE_S), UNREACHABLE_LONGEST_PAUSE_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=pause)
            else:
                pause = 0.0

    def _count(self, name: str, outcome: PlanOutcome) -> None:
        if outcome.skipped and not outcome.requests:
            return  # never sent: counted by the host budget and said as an event, not a test
        totals = self.totals[name]
        totals[0] += 1
        totals[1] += int(outcome.failed)
        totals[2] += outcome.requests  # the records leave with the flush tick (_heartbeats)

    async def _open_loop(self, deadline: float, names: tuple[str, ...], probabilities: np.ndarray, rate: float,
                         shape: str, stream: int) -> None:
        """Start plans on a schedule (constant or Poisson arrivals), whatever the server's pace.

        Plans are drawn in schedule order from one generator, so the run replays; each plan's
        latency counts from its intended start (no coordinated omission)."""
        rng = lane_generator(self.spec, (1 << 16) + stream)
        ctx = PlanContext(rng, self.spec.scenarios, self.ids, self.spec.models)
        schedule = np.random.default_rng([self.spec.seed, self.spec.worker_id, (1 << 20) + stream])
        mean = 1.0 / rate
        running: set[asyncio.Task] = set()
        due_ns = time.monotonic_ns()
        draw = ScenarioDraw(probabilities)
        while not self._stop.is_set() and time.monotonic() < deadline:
            gap = schedule.exponential(mean) if shape == "poisson" else mean
            due_ns += int(gap * 1e9)
            wait = (due_ns - time.monotonic_ns()) / 1e9
            if wait > 0:
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=wait)
                    break
                except TimeoutError:
                    pass
            name = names[draw(rng)]
            if len(running) >= self.spec.max_outstanding:
                replay_draw(name, ctx, self.planners)  # the draw is consumed either way: the schedule replays
                self._skipped += 1
                continue
            self._lateness_ns = max(self._lateness_ns, time.monotonic_ns() - due_ns)
            task = asyncio.create_task(self._run_one(name, ctx, due_ns))
            task.add_done_callback(lambda t, n=name: (running.discard(t), self._count(n, t.result())))
            running.add(task)
        if running:
            await asyncio.gather(*running)

    async def _run_one(self, name: str, ctx: PlanContext, intended_ns: int = 0) -> PlanOutcome:
        try:
            if name in _OWN_RUNNERS:
                return await self._run_own(name, ctx)
            # Awaited here, not through a helper coroutine: every frame between the lane and the
            # socket is resumed twice per request.
            return await self.executor.run(self.planners[name](ctx), self.codes[name], intended_ns)
        except Exception as exc:
            return self._broke(name, exc)

    def _broke(self, name: str, exc: Exception) -> PlanOutcome:
        """A scenario that breaks (its planner, the executor) is a failed scenario, not a dead worker."""
        text = f"{type(exc).__name__}: {exc}"
        self.sender.event("scenario_failed", "", name, text)
        return PlanOutcome(name, failed=True, failure=text)

    async def _run_own(self, name: str, ctx: PlanContext) -> PlanOutcome:
        """The scenarios that run themselves instead of a plan of steps."""
        code = self.codes[name]
        if name == "crashing_client":
            return await run_crashing_client(self.executor, ctx, self.spec.scenarios.crashing_client_lifetime, code,
                                             self.spec.grpc_url)
        return await run_steady_load(self.executor, ctx, self.steady, code, self.spec.grpc_url)

    async def _heartbeats(self) -> None:
        """A partial batch leaves within the sender's flush interval (and this 100 ms tick) even
        while every lane waits on a slow model; a heartbeat every second."""
        ticks_per_beat = round(HEARTBEAT_INTERVAL_S / FLUSH_TICK_S)
        tick = 0
        heap = ReleaseTimer()
        while True:
            due = time.monotonic_ns() + int(FLUSH_TICK_S * 1e9)
            await asyncio.sleep(FLUSH_TICK_S)
            self._loop_lag_ns = max(self._loop_lag_ns, time.monotonic_ns() - due)
            tick += 1
            if tick % ticks_per_beat == 0:
                self._heartbeat()
                heap.tick()
                self.executor.trim_pools()  # regions a spike of load added, unused for minutes since
            else:
                self.sender.maybe_flush(time.monotonic_ns())
            self.executor.sweep()  # large requests the server finished give back their budget

    def _heartbeat(self) -> None:
        flight, check = self.executor.in_flight, self.executor.check
        oldest, counts, starts = flight.by_model()
        self.sender.flush()
        self.sender.flush_events()
        self.sender.heartbeat(Heartbeat(
            time_ns=time.monotonic_ns(), in_flight=len(flight.requests), oldest_in_flight_ns=flight.oldest_ns(),
            open_sequences=dict(flight.sequences), records_sent=self.sender.records_sent,
            records_dropped=self.sender.records_dropped,
            plans={k: (v[0], v[1], v[2]) for k, v in self.totals.items()},
            schedule_lateness_ns=self._lateness_ns, schedule_skipped=self._skipped,
            oldest_by_model=oldest, in_flight_by_model=counts, starts_by_model=starts, models=tuple(self.models),
            cpu_s=time.process_time(), loop_lag_ns=self._loop_lag_ns,
            answers=(check.answers_compared, check.answers_sampled, check.answers_skipped),
        ))
        self._lateness_ns = 0
        self._loop_lag_ns = 0


def worker_main(spec: WorkerSpec) -> None:
    """Process entry point (spawn context). SIGTERM and SIGINT stop it gracefully: in-flight plans
    finish (each is bounded by its deadline), the last records and heartbeat are sent. The same
    happens when the coordinator dies."""
    # Until the event loop takes the signals over (below), a stop is only noted: building the worker
    # takes a while, and a SIGTERM then (a run stopped while it starts) must still end it cleanly,
    # not kill it with its telemetry unsent. The heap timer is the heartbeat loop's, which a Ray actor runs too.
    stopped_early: list[bool] = []
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    enter_process(spec.run_id, f"worker {spec.worker_id}", stop=lambda: stopped_early.append(True),
                  stop_on=stop_signals)
    worker = Worker(spec)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in stop_signals:
            loop.add_signal_handler(sig, worker.stop)
        if stopped_early:
            worker.stop()
        await worker.run()

    event_loop.run(main(), spec.event_loop)


def start_worker(spec: WorkerSpec) -> multiprocessing.process.BaseProcess:
    return spawn(worker_main, spec, f"worker-{spec.worker_id}")


__all__ = ["PROCESS_SCENARIOS", "PlanError", "Worker", "WorkerSpec", "replay_scenarios", "scenario_table",
           "start_worker", "worker_main"]
