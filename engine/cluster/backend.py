"""How the coordinator starts, stops and watches the run's workers and monitors, wherever they
run. The coordinator sees handles only: alive or not, why it ended, stop (graceful), kill.

`LocalBackend` (local.py) is the default: spawned processes on this host. `RayBackend`
(ray_backend.py, imported only when `[cluster] backend = "ray"`) runs the same code in Ray actors,
and this host's processes where a monitor must run beside a server launched here.
"""

from __future__ import annotations

from typing import Protocol

from engine.config import ClusterSection
from engine.monitor import MonitorSpec
from shm import CleanupReport
from workers.worker import WorkerSpec

from .keys import ClientKeys
from .local import LocalBackend
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

    def describe(self, worker_id: int, handle: Handle) -> str:
        """Where the worker runs and why, for the run's record; "" where there is nothing to say
        (every worker on this host)."""

    def close(self) -> None: ...


def make_backend(cluster: ClusterSection, run_id: str, client_keys: ClientKeys | None = None) -> WorkerBackend:
    """The backend the config names. Ray is imported here and only here, only when asked for;
    `client_keys` are what its remote senders present to the aggregator."""
    if cluster.backend == "ray":
        from .ray_backend import RayBackend

        return RayBackend(cluster, run_id, client_keys)
    return LocalBackend()
