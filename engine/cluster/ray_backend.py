"""Workers and monitors as Ray actors (`[cluster] backend = "ray"`). Imported only in Ray mode.

A worker actor runs the same `workers.worker.Worker` as a worker process, on its own event loop
in one thread of a threaded actor (the other thread takes `stop`). The coordinator supervises it
through the actor's `run` call: while that call is pending the worker runs; when the actor dies
(killed, OOM, its node lost) the call fails with the reason, and the worker is replaced as a
dead process would be. Actors belong to the coordinator's Ray job, so they end with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from engine.config import ClusterSection
from engine.monitor import MonitorSpec
from engine.monitor.sampler import run_monitor
from shm import CleanupReport
from workers import event_loop
from workers.worker import Worker, WorkerSpec

from .keys import ClientKeys
from .local import ProcessHandle, clean_here
from .placement import (
    PIN_AMOUNT,
    NodeInfo,
    Placement,
    PlacementError,
    server_node,
    uses_shared_memory,
    worker_placement,
)
from .targets import TargetInfo


@ray.remote(max_restarts=0, max_concurrency=2)
class WorkerActor:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: Worker | None = None
        self._stopped = threading.Event()

    def where(self) -> tuple[str, int]:
        return ray.get_runtime_context().get_node_id(), os.getpid()

    def run(self) -> int:
        worker = Worker(self.spec)

        async def main() -> None:
            self._loop, self._worker = asyncio.get_running_loop(), worker
            if self._stopped.is_set():
                worker.stop()
            await worker.run()

        event_loop.run(main(), self.spec.event_loop)
        return 0

    def stop(self) -> None:
        self._stopped.set()
        if self._loop is not None and self._worker is not None:
            self._loop.call_soon_threadsafe(self._worker.stop)


@ray.remote(max_restarts=0, max_concurrency=2, num_cpus=0)
class MonitorActor:
    def __init__(self) -> None:
        self._stop = threading.Event()

    def where(self) -> tuple[str, int]:
        return ray.get_runtime_context().get_node_id(), os.getpid()

    def run(self, spec: MonitorSpec) -> int:
        run_monitor(spec, self._stop)
        return 0

    def stop(self) -> None:
        self._stop.set()


@ray.remote(num_cpus=0, max_retries=0)
def _clean_on_node(run_id: str, grpc_url: str, worker_id: int | None) -> CleanupReport:
    return clean_here(run_id, grpc_url, worker_id)


class ActorHandle:
    """A worker or monitor actor, supervised through its pending `run` call."""

    def __init__(self, actor: Any, run_ref: Any) -> None:
        self.actor = actor
        self._run = run_ref

    def is_alive(self) -> bool:
        ready, _ = ray.wait([self._run], timeout=0)
        return not ready

    def exit_text(self) -> str:
        try:
            ray.get(self._run, timeout=0)
            return "exited (its run ended)"
        except ray.exceptions.RayActorError as exc:
            reason = str(exc).strip().splitlines()
            return f"exited (Ray actor died: {reason[-1][:200] if reason else type(exc).__name__})"
        except ray.exceptions.RayError as exc:
            return f"exited ({type(exc).__name__}: {str(exc).strip()[:200]})"

    def stop(self) -> None:
        with contextlib.suppress(ray.exceptions.RayError):
            self.actor.stop.remote()

    def kill(self) -> None:
        ray.kill(self.actor, no_restart=True)

    def join(self, timeout: float) -> None:
        ray.wait([self._run], timeout=timeout)

    def where(self, timeout: float = 30.0) -> tuple[str, int]:
        """(Ray node id, pid) of the actor's process."""
        return ray.get(self.actor.where.remote(), timeout=timeout)


def _options(placement: Placement) -> dict[str, Any]:
    if placement.resource:
        return {"resources": {placement.resource: PIN_AMOUNT}}
    if placement.node_id:
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(placement.node_id, soft=False)}
    return {"scheduling_strategy": "SPREAD"}


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RayBackend:
    name = "ray"

    def __init__(self, cluster: ClusterSection, run_id: str, client_keys: ClientKeys | None = None) -> None:
        self.cluster = cluster
        self.run_id = run_id
        if not ray.is_initialized():
            ray.init(address=cluster.address or None, namespace=f"triton-endurance-{run_id}",
                     include_dashboard=False, log_to_driver=False, configure_logging=False,
                     **({"_node_ip_address": cluster.node_ip_address} if cluster.node_ip_address else {}))
        host = cluster.telemetry_host or ray.util.get_node_ip_address()
        self.remote_endpoint = f"tcp://{host}:{cluster.telemetry_port or _free_port(host)}"
        self.client_keys = client_keys
        self.placements: dict[int, Placement] = {}  # worker id -> where it was asked to run

    def nodes(self) -> list[NodeInfo]:
        return [NodeInfo(n["NodeID"], n["NodeManagerAddress"], dict(n.get("Resources", {})), bool(n.get("Alive")))
                for n in ray.nodes()]

    def start_worker(self, spec: WorkerSpec, target: TargetInfo) -> ActorHandle:
        shared = uses_shared_memory(spec.shm_mode, (load.shm for load in spec.user_loads))
        placement = worker_placement(target, shared, self.nodes(), self.cluster.node_resource_prefix)
        self.placements[spec.worker_id] = placement
        actor = WorkerActor.options(name=f"worker-{spec.worker_id}", num_cpus=self.cluster.worker_cpus,
                                    **_options(placement)).remote(spec)
        return ActorHandle(actor, actor.run.remote())

    def describe(self, worker_id: int, handle: ActorHandle) -> str:
        """"worker 3 on node <id> (<address>) [its custom resources]: <why>", from the actor itself."""
        placement = self.placements.get(worker_id, Placement())
        try:
            node_id, pid = handle.where(timeout=10.0)
        except Exception as exc:  # noqa: BLE001 - a dead or unreachable actor says why
            return f"worker {worker_id}: unknown ({type(exc).__name__}); asked: {placement.why}"
        node = next((n for n in self.nodes() if n.node_id == node_id), None)
        marks = sorted(r for r in (node.resources if node else {}) if r.startswith(self.cluster.node_resource_prefix))
        return (f"worker {worker_id} on node {node_id} ({node.address if node else '?'}) pid {pid} "
                f"[{', '.join(marks)}]: {placement.why}")

    def start_monitor(self, spec: MonitorSpec, target: TargetInfo, launched: bool) -> Any:
        if launched:  # a server this coordinator launched runs here: so does its monitor
            from engine.monitor import start_monitor

            return ProcessHandle(start_monitor(spec))
        placement = server_node(target, self.nodes(), self.cluster.node_resource_prefix)
        actor = MonitorActor.options(**_options(placement)).remote()
        return ActorHandle(actor, actor.run.remote(spec))

    def clean_shm(self, run_id: str, target: TargetInfo, worker_id: int | None) -> CleanupReport:
        try:
            placement = server_node(target, self.nodes(), self.cluster.node_resource_prefix)
        except PlacementError:  # no node known for the server: its regions can only be on this one
            return clean_here(run_id, target.endpoints.grpc, worker_id)
        return ray.get(_clean_on_node.options(**_options(placement)).remote(run_id, target.endpoints.grpc, worker_id),
                       timeout=60)

    def close(self) -> None:
        if ray.is_initialized():
            ray.shutdown()
