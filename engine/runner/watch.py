"""The watch processes of a run: the aggregator (telemetry in, windows, detectors, the store) and
one monitor per server (its resources sampled). Started before the workers, restarted when they
die, stopped after the workers: the monitors first, then the aggregator, which drains what the
workers sent last, closes the last windows and commits."""

from __future__ import annotations

import datetime
import multiprocessing.process
import time

import orjson

from model_repo_gen import ModelSpec
from shm import run_region_prefixes

from ..aggregator.service import AggregatorSpec, start_aggregator
from ..cluster.backend import Handle
from ..cluster.keys import leaves_host
from ..config import config_to_dict
from ..detectors.stall import ModelTiming
from ..monitor import MonitorSpec
from ..series_names import target_prefix
from ..server import LaunchedServer
from .context import RunContext
from .incidents import IncidentLog

AGGREGATOR_STOP_S = 60.0  # the final windows, detectors and commit
AGGREGATOR_RESTARTS = 3
AGGREGATOR_START_S = 30.0
MONITOR_STOP_S = 10.0


def model_timings(specs: tuple[ModelSpec, ...]) -> dict[str, ModelTiming]:
    """What each generated model's configuration says about how long a request may take."""
    return {s.name: ModelTiming(s.execute_delay_ms / 1000.0, s.instance_count, s.max_batch_size,
                                s.sequence.idle_timeout_s if s.sequence else 0.0) for s in specs}


class WatchProcesses:
    def __init__(self, ctx: RunContext, incidents: IncidentLog) -> None:
        self._ctx = ctx
        self._incidents = incidents
        self._aggregator: multiprocessing.process.BaseProcess | None = None
        self._spec: AggregatorSpec | None = None
        self._restarts = 0
        self._monitors: dict[int, Handle] = {}  # target index -> its monitor

    def start(self, deadline: float, outlive_s: float) -> None:
        """The aggregator, then a monitor per server, sampling until `outlive_s` past `deadline`
        (the workers' start and the aggregator's last windows). RuntimeError when the aggregator
        does not come up."""
        ctx = self._ctx
        config = ctx.config
        self._spec = AggregatorSpec(
            run_id=ctx.paths.run_id, endpoint=ctx.telemetry_endpoint, store_path=str(ctx.store_path),
            config_json=orjson.dumps({"config": config_to_dict(config), "detectors": ctx.settings.echo(),
                                      "targets": [{"name": t.name, "http": t.endpoints.http, "host": t.info.host,
                                                   "weight": t.info.weight} for t in ctx.targets]},
                                     default=str).decode(),
            started_wall=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            origin_ns=int(ctx.load_started * 1e9), run_s=config.run.duration, settings=ctx.settings,
            timings=model_timings(ctx.models), prometheus_port=config.report.prometheus_port,
            remote_endpoint=ctx.backend.remote_endpoint if ctx.backend else "",
            curve=ctx.keys.server if ctx.keys else None,
        )
        self._aggregator = start_aggregator(self._spec)
        self._incidents.connect(ctx.telemetry_endpoint)
        for index in range(len(ctx.targets)):
            self._start_monitor(index, deadline, outlive_s)
        waited = time.monotonic() + AGGREGATOR_START_S
        while not ctx.store_path.exists() and time.monotonic() < waited and self._aggregator.is_alive():
            time.sleep(0.05)
        if not ctx.store_path.exists():
            raise RuntimeError(f"the aggregator did not start (exit status {self._aggregator.exitcode})")

    def _start_monitor(self, index: int, deadline: float, outlive_s: float) -> None:
        """A launched server's monitor runs here and knows its pid; an attached server's in Ray
        mode runs on the server's node, and one on this host's loopback here: both find the server
        by its port (and read its /proc). Any other attached server is watched through its
        endpoints alone."""
        ctx = self._ctx
        target = ctx.targets[index]
        server = target.server
        launched = isinstance(server, LaunchedServer)
        remote = ctx.remote and not launched
        findable = remote or (not launched and not leaves_host(f"tcp://{server.endpoints.http}"))
        assert ctx.backend is not None and ctx.host is not None
        self._monitors[index] = ctx.backend.start_monitor(MonitorSpec(
            server_pid=server.pid, metrics_url=server.endpoints.metrics, http_url=server.endpoints.http,
            run_id=ctx.paths.run_id,
            shm_prefixes=run_region_prefixes(ctx.paths.run_id),
            interval_s=ctx.settings.sample_interval_s,
            telemetry_endpoint=ctx.backend.remote_endpoint if remote else ctx.telemetry_endpoint,
            deadline_s=max(0.0, deadline - ctx.clock()) + outlive_s,
            series_prefix=target_prefix(target.name),
            telemetry_keys=ctx.keys.client if remote and ctx.keys else None,
            server_port=int(server.endpoints.http.rsplit(":", 1)[1]) if findable else 0,
            budget_path=ctx.host.path if launched and index == 0 else "",  # one monitor holds back large plans
        ), target.info, launched)

    def restart_monitor(self, index: int, deadline: float, outlive_s: float) -> None:
        """A restarted server is a new process: the monitor follows it from scratch (its series
        start again under the new pid, so the drop to a fresh server is never read as a trend)."""
        old = self._monitors.get(index)
        if old is not None and old.is_alive():
            old.stop()
            old.join(MONITOR_STOP_S)
            if old.is_alive():
                old.kill()
                old.join(5.0)
        self._start_monitor(index, deadline, outlive_s)

    def keep_aggregator(self) -> bool:
        """Start a new aggregator when it died, on the same store and socket: it goes on from the
        last commit (the workers' sockets reconnect by themselves; what was sent meanwhile is
        counted lost). False when it died once too often: the run stops."""
        assert self._aggregator is not None and self._spec is not None
        if self._aggregator.is_alive():
            return True
        status = self._aggregator.exitcode
        if self._restarts >= AGGREGATOR_RESTARTS:
            self._incidents.add(f"the aggregator exited (status {status}) for the {self._restarts + 1}th time; "
                                "the run stops")
            return False
        self._restarts += 1
        self._aggregator = start_aggregator(self._spec)
        # Said once it listens again, so the incident reaches the store.
        self._incidents.add(f"the aggregator exited (status {status}); started again, its open windows are lost")
        return True

    def stop(self) -> None:
        """The monitors first (nothing more to sample), then the aggregator: it drains, closes the
        last windows, evaluates once more and commits."""
        for monitor in self._monitors.values():
            monitor.stop()
        for index, monitor in self._monitors.items():
            monitor.join(MONITOR_STOP_S)
            if monitor.is_alive():
                self._incidents.add(f"the monitor{self._ctx.of(index)} did not stop in time; killed")
                monitor.kill()
                monitor.join(5.0)
        self._monitors.clear()
        process = self._aggregator
        if process is not None and process.is_alive():
            process.terminate()
            process.join(AGGREGATOR_STOP_S)
            if process.is_alive():
                self._incidents.add("the aggregator did not stop in time; killed")
                process.kill()
                process.join(5.0)
        self._incidents.close()
