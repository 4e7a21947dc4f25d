"""The run's worker processes: spawned per server in the configured shares, supervised (a dead
worker is an incident and is replaced by a fresh one with a new correlation-id block; a silent
one is killed and then replaced), halted when their server is lost, stopped gracefully at the
end, and the shared memory each left behind unregistered and unlinked."""

from __future__ import annotations

import signal

from workers.worker import WorkerSpec

from ..aggregator.service import LOAD_STOPPED, WORKER_GONE
from ..cluster.backend import Handle
from ..cluster.local import ProcessHandle, clean_here
from ..cluster.targets import split_workers
from ..store import RunStore
from .context import RunContext
from .incidents import IncidentLog

WORKER_START_S = 60.0  # the longest wait for the first workers' first heartbeats
HALT_GRACE_S = 10.0
STOP_GRACE_EXTRA_S = 30.0  # beyond two sequence deadlines: the last plans finish, the last heartbeat


class WorkerPool:
    def __init__(self, ctx: RunContext, incidents: IncidentLog) -> None:
        self._ctx = ctx
        self._incidents = incidents
        self.workers: dict[int, Handle] = {}  # worker id -> its handle
        self._target_of: dict[int, int] = {}  # worker id -> index of the server it drives
        self._shares: dict[int, int] = {}  # server index -> how many workers drive it
        self._next_id = 0

    # -- start ------------------------------------------------------------------------------
    def start(self, deadline: float) -> None:
        """The configured workers, shared among the servers by their weights."""
        ctx = self._ctx
        assignment = split_workers(ctx.config.workers.count, [t.info.weight for t in ctx.targets])
        self._shares = {i: assignment.count(i) for i in range(len(ctx.targets))}
        for target_index in assignment:
            self._spawn(target_index, deadline)

    def _spawn(self, target_index: int, deadline: float) -> None:
        ctx = self._ctx
        config = ctx.config
        index = self._next_id
        self._next_id += 1
        block = config.workers.correlation_id_block
        target = ctx.targets[target_index]
        endpoints = target.endpoints
        assert ctx.backend is not None and ctx.host is not None
        remote = ctx.remote
        spec = WorkerSpec(
            worker_id=index, run_id=ctx.paths.run_id, seed=config.run.seed, id_base=1 + index * block,
            id_block=block, grpc_url=endpoints.grpc, http_url=endpoints.http, protocol=config.workers.protocol,
            concurrency=config.workers.concurrency, models=ctx.models, scenarios=config.scenarios,
            # The coordinator ends the load (SIGTERM at its deadline, which may move later by up to
            # WORKER_START_S once the workers run); the worker's own deadline is only a backstop.
            telemetry_endpoint=ctx.backend.remote_endpoint if remote else ctx.telemetry_endpoint,
            deadline_s=max(0.0, deadline - ctx.clock()) + WORKER_START_S,
            shm_mode=config.workers.shm, cuda_device=config.workers.cuda_device,
            user_loads=ctx.user_loads,
            load=config.workers.load, rate=config.workers.rate,
            max_outstanding=config.workers.max_outstanding,
            target=target.name, telemetry_keys=ctx.keys.client if remote and ctx.keys else None,
            event_loop=config.workers.event_loop,
            validate=config.workers.validate, validate_pages=config.workers.validate_pages,
            validate_fraction=config.workers.validate_fraction,
            budget_path="" if remote else ctx.host.path, host_inputs=() if remote else ctx.host.host_inputs,
        )
        self.workers[index] = ctx.backend.start_worker(spec, target.info)
        self._target_of[index] = target_index

    def wait_first_heartbeats(self, deadline: float) -> float:
        """Wait for every first worker's first heartbeat, then count the run's duration from there:
        on a loaded host a worker's start (imports, clients, shm registration) takes seconds, and a
        short run must not end before its load began. The new deadline (the old one when they do
        not all report in time: supervision handles workers that die)."""
        ctx = self._ctx
        wanted = {f"worker-{index}" for index in self.workers}
        reader = RunStore.open(ctx.store_path)
        try:
            until = ctx.clock() + WORKER_START_S
            while ctx.clock() < until and any(p.is_alive() for p in self.workers.values()):
                status = reader.status()
                if status is not None and wanted <= set(status.heartbeat_age_s):
                    break
                ctx.sleep(0.2)
            else:
                return deadline
        finally:
            reader.close()
        return max(deadline, ctx.clock() + ctx.config.run.duration)

    def say_placement(self) -> None:
        """Where each worker landed and why, where the backend can tell (Ray): said, and into the store."""
        backend = self._ctx.backend
        assert backend is not None
        for index, handle in sorted(self.workers.items()):
            text = backend.describe(index, handle)
            if text:
                self._ctx.say(f"placement: {text}")
                self._incidents.placement(f"worker-{index}", text)

    # -- supervise --------------------------------------------------------------------------
    def replace_dead(self, deadline: float) -> bool:
        """Each worker that died (before the last second of the load) is an incident, its shared
        memory is cleaned, and a fresh worker takes its place. False when the OOM killer has
        struck often enough that the run must stop (no replacement then)."""
        ctx = self._ctx
        for index, handle in list(self.workers.items()):
            if handle.is_alive() or ctx.clock() >= deadline - 1.0:
                continue
            said = (ctx.oom.explain(handle.pid, f"worker {index}", ctx.large_bytes_in_flight)
                    if ctx.oom is not None and isinstance(handle, ProcessHandle) and handle.pid
                    and handle.process.exitcode == -signal.SIGKILL else "")
            stops = ctx.oom is not None and ctx.oom.stops_run
            self._incidents.add(f"worker {index} {handle.exit_text()}" + ("" if stops else "; replaced")
                                + (f": {said}" if said else ""))
            self._incidents.tell(WORKER_GONE, f"worker-{index}")
            target_index = self._target_of.pop(index)
            self.clean_shm(target_index, worker_id=index)
            del self.workers[index]
            if stops:
                return False
            self._spawn(target_index, deadline)
        return True

    def kill_silent(self, heartbeat_ages: dict[str, float]) -> None:
        """A worker alive but silent (a deadlocked event loop, a stuck native call) drives nothing
        and reports nothing: it is killed here, and replaced like a dead one on the next pass."""
        for index, handle in self.workers.items():
            age = heartbeat_ages.get(f"worker-{index}")
            if age is not None and age > self._ctx.config.workers.silent_timeout and handle.is_alive():
                self._incidents.add(f"worker {index} sent no heartbeat for {age:.0f} s; killed")
                handle.kill()
                handle.join(5.0)

    def halt_target(self, target_index: int) -> None:
        """Stop the workers of this server now (it is gone: nothing they would finish counts)."""
        ours = {w: self.workers.pop(w) for w, t in list(self._target_of.items())
                if t == target_index and w in self.workers}
        for w in ours:
            self._target_of.pop(w, None)
        for handle in ours.values():
            if handle.is_alive():
                handle.stop()
        until = self._ctx.clock() + HALT_GRACE_S
        while self._ctx.clock() < until and any(p.is_alive() for p in ours.values()):
            self._ctx.sleep(0.1)
        for handle in ours.values():
            if handle.is_alive():
                handle.kill()
                handle.join(5.0)

    def restart_target(self, target_index: int, deadline: float) -> None:
        """This server's share of fresh workers (after it came back)."""
        for _ in range(self._shares[target_index]):
            self._spawn(target_index, deadline)

    # -- stop -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Gracefully: plans in flight finish and the last heartbeat is sent; a worker still
        running after two sequence deadlines (and some) is an incident, and killed."""
        ctx = self._ctx
        self._incidents.tell(LOAD_STOPPED, "the coordinator stops the load")  # leak and drift: loaded time only
        for handle in self.workers.values():
            if handle.is_alive():
                handle.stop()
        grace = ctx.clock() + 2 * ctx.config.scenarios.sequence_deadline + STOP_GRACE_EXTRA_S
        while ctx.clock() < grace and any(p.is_alive() for p in self.workers.values()):
            ctx.sleep(0.2)
        for index, handle in self.workers.items():
            if handle.is_alive():
                self._incidents.add(f"worker {index} did not stop in time; killed")
                handle.kill()

    def kill_all(self) -> None:
        for handle in self.workers.values():
            if handle.is_alive():
                handle.kill()

    def clean_shm(self, target_index: int, worker_id: int | None = None) -> None:
        """Unregister and unlink, on the server's node, what a dead worker (or, at the end, any
        worker) of this server left behind."""
        ctx = self._ctx
        target = ctx.targets[target_index]
        try:
            if ctx.backend is not None:
                report = ctx.backend.clean_shm(ctx.paths.run_id, target.info, worker_id)
            else:
                report = clean_here(ctx.paths.run_id, target.endpoints.grpc, worker_id)
        except Exception as exc:  # the server may be gone; /dev/shm is cleaned on the next pass
            self._incidents.add(f"shared-memory cleanup{ctx.of(target_index)} failed: {exc}")
            return
        if report.unregistered or report.unlinked:
            whose = f"worker {worker_id}" if worker_id is not None else "the run"
            self._incidents.add(f"shared memory left by {whose}: unregistered {len(report.unregistered)}, "
                                f"unlinked {len(report.unlinked)}")
