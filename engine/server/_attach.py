"""Use a Triton server that is already running, after checking that it can take the run."""

from __future__ import annotations

import difflib
import time
import urllib.parse
from collections.abc import Sequence

from ._bundled import ServerSetupError
from ._handle import ServerEndpoints, StubProcess
from ._health import is_live, is_ready, model_ready, repository_index


def _host_port(url: str, what: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if not parsed.hostname or not parsed.port:
        raise ServerSetupError(f"{what} {url!r} must be host:port or http://host:port")
    return parsed.hostname, parsed.port


def endpoints_from_urls(url: str, grpc_url: str = "", metrics_url: str = "") -> ServerEndpoints:
    """Endpoints of a running server; missing ones follow Triton's default layout (HTTP port + 1
    for gRPC, + 2 for metrics)."""
    host, port = _host_port(url, "server url")
    if grpc_url:
        grpc_host, grpc_port = _host_port(grpc_url, "grpc url")
        grpc = f"{grpc_host}:{grpc_port}"
    else:
        grpc = f"{host}:{port + 1}"
    if metrics_url:
        metrics = metrics_url if "://" in metrics_url else f"http://{metrics_url}"
        if not urllib.parse.urlsplit(metrics).path.strip("/"):
            metrics = metrics.rstrip("/") + "/metrics"
    else:
        metrics = f"http://{host}:{port + 2}/metrics"
    return ServerEndpoints(http=f"{host}:{port}", grpc=grpc, metrics=metrics)


class AttachedServer:
    """A server the engine did not start: it is checked, never stopped."""

    pid: int | None = None

    def __init__(self, endpoints: ServerEndpoints, models: Sequence[str] = ()) -> None:
        self.endpoints = endpoints
        self.models = tuple(models)

    def is_running(self) -> bool:
        return is_live(self.endpoints.http)

    def wait_back(self, timeout: float, first_pause_s: float = 0.5, longest_pause_s: float = 15.0) -> bool:
        """After the server stopped answering: look again with a growing pause (a restarting server
        is not hammered, a quick one is found quickly) until it is ready with every model, or
        `timeout` passes. True when it is back."""
        deadline = time.monotonic() + timeout
        pause = first_pause_s
        while True:
            if is_ready(self.endpoints.http) and all(model_ready(self.endpoints.http, m) for m in self.models):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, longest_pause_s)

    def stub_processes(self) -> list[StubProcess]:
        return []  # not ours to look into (it may run on another host)

    def stop(self) -> None:
        return None

    def __enter__(self) -> AttachedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def attach_server(endpoints: ServerEndpoints, models: Sequence[str], timeout: float = 30.0) -> AttachedServer:
    """Wait up to `timeout` for the server to be live and ready with every model in `models` ready."""
    deadline = time.monotonic() + timeout
    while not is_live(endpoints.http):
        if time.monotonic() > deadline:
            raise ServerSetupError(f"no Triton server answers at http://{endpoints.http} (waited {timeout:g} s)")
        time.sleep(0.2)
    missing: list[str] = list(models)
    while True:
        missing = [m for m in missing if not model_ready(endpoints.http, m)]
        if is_ready(endpoints.http) and not missing:
            break
        if time.monotonic() > deadline:
            raise ServerSetupError(_not_ready_message(endpoints, missing))
        time.sleep(0.2)
    _check_grpc(endpoints)
    return AttachedServer(endpoints, models)


def _not_ready_message(endpoints: ServerEndpoints, missing: list[str]) -> str:
    if not missing:
        return f"the server at http://{endpoints.http} is live but not ready"
    try:
        index = repository_index(endpoints.http)
    except Exception:  # the index is an optional extension; the message stays useful without it
        index = []
    states = {entry.get("name", ""): entry for entry in index}
    parts = []
    for name in missing:
        entry = states.get(name)
        if entry is None:
            close = difflib.get_close_matches(name, list(states), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            parts.append(f"model {name!r} is not in the server's repository{hint}")
        else:
            reason = entry.get("reason") or ""
            parts.append(f"model {name!r} is {entry.get('state', 'not ready')}" + (f": {reason}" if reason else ""))
    return f"server at http://{endpoints.http}: " + "; ".join(parts)


def _check_grpc(endpoints: ServerEndpoints) -> None:
    import tritonclient.grpc as grpcclient

    try:
        client = grpcclient.InferenceServerClient(endpoints.grpc)
        try:
            live = client.is_server_live(client_timeout=5.0)
        finally:
            client.close()
    except Exception as exc:  # any transport error means the same to the user
        raise ServerSetupError(f"the server's gRPC endpoint {endpoints.grpc} does not answer: {exc}") from None
    if not live:
        raise ServerSetupError(f"the server's gRPC endpoint {endpoints.grpc} says it is not live")
