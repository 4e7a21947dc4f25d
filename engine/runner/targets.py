"""The servers a run drives (the [server] one, launched or attached, or each server of a
`[[targets]]` fleet) and the backend that runs its workers and monitors."""

from __future__ import annotations

from ..cluster.backend import WorkerBackend, make_backend
from ..cluster.keys import generate_run_keys
from ..cluster.targets import Target, TargetInfo, fleet, url_host
from ..run_setup import start_server
from ..server import LaunchedServer, ServerSetupError, attach_server
from .context import RunContext


def start_targets(ctx: RunContext) -> list[Target]:
    """Launch or attach the run's servers (ServerSetupError when one cannot be reached)."""
    config = ctx.config
    if not config.targets:
        server = start_server(config, ctx.paths, ctx.models)
        host = config.server.host if isinstance(server, LaunchedServer) else url_host(config.server.url)
        return [Target(TargetInfo("", server.endpoints, host), server)]
    wanted = [m.name for m in ctx.models] + [entry.model for entry in config.load]
    return [Target(info, attach_server(info.endpoints, wanted, timeout=config.server.startup_timeout))
            for info in fleet(config)]

def start_backend(ctx: RunContext) -> WorkerBackend:
    """The [cluster] backend; a Ray cluster that cannot start or be reached is a set-up error,
    said in one line. Sets `ctx.keys` for Ray (its telemetry leaves the host)."""
    cluster = ctx.config.cluster
    if cluster.backend == "ray":
        ctx.keys = generate_run_keys()
    try:
        backend = make_backend(cluster, ctx.paths.run_id, ctx.keys.client if ctx.keys else None)
    except Exception as exc:  # ray missing, or its cluster not reachable
        raise ServerSetupError(f"[cluster] backend = \"{cluster.backend}\": cannot start or reach the Ray "
                               f"cluster at {cluster.address or '(a new local one)'}: {exc}") from None
    if backend.remote_endpoint:
        ctx.say(f"cluster: Ray; workers as actors, telemetry on {backend.remote_endpoint} (CURVE)")
    return backend

def describe_targets(targets: list[Target]) -> list[str]:
    """One line per server: its endpoints and pid (or that it is attached)."""
    lines = []
    for target in targets:
        server = target.server
        lines.append(("server" if not target.name else f"server {target.name}")
                     + f": http {server.endpoints.http}, grpc {server.endpoints.grpc}, "
                     f"metrics {server.endpoints.metrics}" + (f", pid {server.pid}" if server.pid else " (attached)"))
    return lines
