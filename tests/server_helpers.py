"""Start the real bundled tritonserver for a test, and make sure it is gone afterwards."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import zmq

from engine.server import LaunchedServer, LaunchOptions


class RunningServer:
    """What a test needs of a running server."""

    def __init__(self, server: LaunchedServer) -> None:
        self.server = server
        self.http_url = server.endpoints.http
        self.grpc_url = server.endpoints.grpc
        self.metrics_url = server.endpoints.metrics
        self.pid = server.pid


@contextmanager
def serve_repository(repo_dir: Path, work_dir: Path, extra_args: Sequence[str] = (),
                     startup_timeout: float = 90.0) -> Iterator[RunningServer]:
    """The bundled server on free loopback ports, serving `repo_dir`; stopped on exit, even on failure."""
    server = LaunchedServer(LaunchOptions(
        repository=Path(repo_dir), work_dir=Path(work_dir), startup_timeout=startup_timeout,
        stop_timeout=15.0, extra_args=tuple(extra_args),
    ))
    try:
        server.start()
        yield RunningServer(server)
    finally:
        server.stop()


def successes(metrics_url: str) -> float:
    """The server's own count of successful requests, summed over models."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("nv_inference_request_success{"))


@contextmanager
def telemetry_sink(directory: Path, name: str = "telemetry") -> Iterator[tuple[str, zmq.Socket]]:
    """A bound PULL socket (ipc in `directory`) that telemetry senders can connect to."""
    context = zmq.Context()
    socket = context.socket(zmq.PULL)
    endpoint = f"ipc://{directory}/{name}.sock"
    socket.bind(endpoint)
    try:
        yield endpoint, socket
    finally:
        socket.close(0)
        context.term()


def only_weights(**weights: int) -> str:
    """A `[scenarios.weights]` table giving these scenarios their weights and every other one 0."""
    from engine.config._sections import SCENARIOS

    unknown = set(weights) - set(SCENARIOS)
    if unknown:
        raise ValueError(f"no such scenarios: {sorted(unknown)}")
    return "[scenarios.weights]\n" + "".join(f"{name} = {weights.get(name, 0)}\n" for name in SCENARIOS)
