"""This host's side of the run's workers and monitors: spawned processes, and the cleanup of the
shared memory they leave on a server of this host. The local backend is made of these alone; the
Ray backend uses them for what stays on this host."""

from __future__ import annotations

import multiprocessing.process

import tritonclient.grpc as grpcclient

from engine.monitor import MonitorSpec, start_monitor
from shm import CleanupReport, cleanup
from workers.worker import WorkerSpec, start_worker

from .keys import ClientKeys
from .targets import TargetInfo


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

    def describe(self, worker_id: int, handle: object) -> str:
        return ""

    def close(self) -> None:
        return None
