"""How the coordinator starts, stops and watches the run's workers and monitors, wherever they
run. The coordinator sees handles only: alive or not, why it ended, stop (graceful), kill.

`LocalBackend` is the default: spawned processes on this host, exactly as before. `RayBackend`
(ray_backend.py, imported only when `[cluster] backend = "ray"`) runs the same code in Ray actors.
"""

from __future__ import annotations

import multiprocessing.process
from typing import Protocol

import tritonclient.grpc as grpcclient

from engine.config import ClusterSection
from engine.monitor import MonitorSpec, start_monitor
from shm import CleanupReport, cleanup
from workers.worker import WorkerSpec, start_worker

from .keys import ClientKeys
from .targets import TargetInfo


class Handle(Protocol):
    """A running worker or monitor, as the coordinator supervises it."""

    def is_alive(self) -> bool: ...

    def exit_text(self) -> str:
        """How it ended, for the incident ("exited with status -9")."""

    def stop(self) -> None:
        """Graceful: plans in flight finish, the last records and heartbeat are sent."""

    def kill(self) -> None: ...

    def join(self, timeout: float) -> None: ...


class WorkerBackend(Protocol):
    name: str
    # Where remote senders reach the aggregator ("" when every sender is on this host) and the
    # keys they need for it (None on this host: ipc needs none).
    remote_endpoint: str
    client_keys: ClientKeys | None

    def start_worker(self, spec: WorkerSpec, target: TargetInfo) -> Handle: ...

    def start_monitor(self, spec: MonitorSpec, target: TargetInfo, launched: bool) -> Handle: ...

    def clean_shm(self, run_id: str, target: TargetInfo, worker_id: int | None) -> CleanupReport:
        """Unregister from the server and unlink, on the server's node, what the run (or one of
        its workers) left in shared memory."""

    def close(self) -> None: ...


class ProcessHandle:
    """A spawned process of this host."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self.process = process

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def exit_text(self) -> str:
        return f"exited with status {self.process.exitcode}"

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()  # SIGTERM: every child's graceful stop

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()

    def join(self, timeout: float) -> None:
        self.process.join(timeout)


def clean_here(run_id: str, grpc_url: str, worker_id: int | None) -> CleanupReport:
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        return cleanup(run_id, client, worker_id=worker_id)
    finally:
        client.close()


class LocalBackend:
    """Worker and monitor processes on this host (multiprocessing, spawn)."""

    name = "local"
    remote_endpoint = ""
    client_keys: ClientKeys | None = None

    def start_worker(self, spec: WorkerSpec, target: TargetInfo) -> ProcessHandle:
        return ProcessHandle(start_worker(spec))

    def start_monitor(self, spec: MonitorSpec, target: TargetInfo, launched: bool) -> ProcessHandle:
        return ProcessHandle(start_monitor(spec))

    def clean_shm(self, run_id: str, target: TargetInfo, worker_id: int | None) -> CleanupReport:
        return clean_here(run_id, target.endpoints.grpc, worker_id)

    def close(self) -> None:
        return None


def make_backend(cluster: ClusterSection, run_id: str, client_keys: ClientKeys | None = None) -> WorkerBackend:
    """The backend the config names. Ray is imported here and only here, only when asked for;
    `client_keys` are what its remote senders present to the aggregator."""
    if cluster.backend == "ray":
        from .ray_backend import RayBackend

        return RayBackend(cluster, run_id, client_keys)
    return LocalBackend()
