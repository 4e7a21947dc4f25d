"""A server lost during the load: a launched one that exited is started again on its ports
([server] restarts), an attached one that stopped answering is waited for with backoff
([server] reconnect_timeout). Its workers stop meanwhile; once it is back, what they left is
cleaned and fresh workers register their regions with it. The other servers of a fleet keep
their load. Either way it is an incident that fails the run: a server that goes away under load
is a finding."""

from __future__ import annotations

import signal

from ..server import LaunchedServer, ServerSetupError
from .context import RunContext
from .incidents import IncidentLog
from .pool import WorkerPool
from .watch import WatchProcesses


class ServerRecovery:
    def __init__(self, ctx: RunContext, incidents: IncidentLog, pool: WorkerPool, watch: WatchProcesses) -> None:
        self._ctx = ctx
        self._incidents = incidents
        self._pool = pool
        self._watch = watch
        self.restarts = 0

    def lost(self) -> list[int]:
        """The servers that are gone now, by index."""
        return [i for i, t in enumerate(self._ctx.targets) if not t.server.is_running()]

    def recover(self, index: int, deadline: float, monitor_outlive_s: float) -> bool:
        """Bring server `index` back with fresh workers. False when it does not come back: the run stops."""
        ctx = self._ctx
        server = ctx.targets[index].server
        launched = isinstance(server, LaunchedServer)
        if launched:
            status = server.returncode
            said = (ctx.oom.explain(server.pid, "tritonserver", ctx.large_bytes_in_flight)
                    if ctx.oom is not None and status == -signal.SIGKILL and server.pid else "")
            self._incidents.add(f"the server exited (status {status})" + (f": {said}" if said else ""))
        else:
            self._incidents.add(f"the server at {server.endpoints.http} stopped answering")
        self._pool.halt_target(index)
        if launched:
            if not self._restart(server):
                return False
            self._watch.restart_monitor(index, deadline, monitor_outlive_s)
        else:
            lost_at = ctx.clock()
            wait = min(ctx.config.server.reconnect_timeout, max(0.0, deadline - lost_at))
            if not server.wait_back(wait):
                self._incidents.add(f"the server did not come back within {wait:.0f} s; the run stops")
                return False
            self._incidents.add(f"the server answers again after {ctx.clock() - lost_at:.1f} s")
        self._pool.clean_shm(index)
        assert ctx.host is not None
        ctx.host.renew_inputs()  # the cleanup took them with the rest of the run's /dev/shm
        self._pool.restart_target(index, deadline)
        return True

    def _restart(self, server: LaunchedServer) -> bool:
        ctx = self._ctx
        allowed = ctx.config.server.restarts
        if ctx.oom is not None and ctx.oom.stops_run:
            self._incidents.add(ctx.oom.stop_text())
            return False
        if self.restarts >= allowed:
            self._incidents.add(f"no server restart left ([server] restarts = {allowed}); the run stops")
            return False
        self.restarts += 1
        try:
            server.restart()
        except ServerSetupError as exc:
            self._incidents.add(f"the server could not be started again; the run stops: {exc}")
            return False
        self._incidents.add(f"the server runs again (restart {self.restarts} of {allowed}, pid {server.pid})")
        return True
