"""The run: set up, prove every model answers, drive the load for the configured duration with
supervised worker processes, watch it (the aggregator and the monitor, each its own process),
and say what happened.

Graceful on SIGINT/SIGTERM (stop sending, let plans finish, final windows, report); a second
SIGINT stops at once. A worker that dies is an incident: it is replaced by a new worker with a
fresh correlation-id block, and the run goes on. A server that dies is started again on its
ports ([server] restarts), an attached one that stops answering is waited for with backoff
([server] reconnect_timeout); the load stops meanwhile and starts again with fresh workers. Either
is an incident that fails the run: a server that goes away under load is a finding. A verdict of a
detector listed as fatal ends the run.
"""

from __future__ import annotations

import datetime
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from model_repo_gen import ModelSpec
from model_repo_gen.options import FAULTY_MODELS
from workers.sender import TelemetrySender
from workers.telemetry import RecordBuffer
from workers.user_load import ResolvedLoad, resolve_loads
from workers.worker import WorkerSpec, scenario_table

from .aggregator.service import INCIDENT, LOAD_STOPPED, WORKER_GONE, AggregatorSpec, start_aggregator
from .cluster.backend import Handle, ProcessHandle, WorkerBackend, make_backend
from .cluster.keys import RunKeys, generate_run_keys
from .cluster.targets import Target, TargetInfo, fleet, split_workers, url_host
from .config import Config, config_to_dict, format_duration
from .detectors.settings import DetectorSettings, resolve_settings
from .detectors.stall import ModelTiming
from .live_view import LiveView
from .memory_budget import HostSide, prepare_host_side
from .monitor import MonitorSpec
from .oom import OomWatch
from .probe import probe_model, probe_table
from .report import load_report, render_page, render_summary, write_reports
from .report.mail import MailError, send_report
from .run_setup import (
    RunPaths,
    backend_region_prefix,
    create_run_dir,
    prepare_repository,
    start_server,
)
from .server import LaunchedServer, ServerSetupError, attach_server
from .store import RunStore
from .stress_report import hhmmss

LIVE_EVERY_S = 1.0
AGGREGATOR_STOP_S = 60.0  # the final windows, detectors and commit
AGGREGATOR_RESTARTS = 3
WORKER_START_S = 60.0  # the longest wait for the first workers' first heartbeats


def model_timings(specs: tuple[ModelSpec, ...]) -> dict[str, ModelTiming]:
    """What each generated model's configuration says about how long a request may take."""
    return {s.name: ModelTiming(s.execute_delay_ms / 1000.0, s.instance_count, s.max_batch_size,
                                s.sequence.idle_timeout_s if s.sequence else 0.0) for s in specs}


@dataclass
class Incident:
    at_s: float  # seconds since the load started
    what: str


@dataclass
class RunOutcome:
    exit_code: int
    paths: RunPaths
    incidents: list[Incident] = field(default_factory=list)


class _Signals:
    """First SIGINT/SIGTERM: stop gracefully. Second SIGINT: stop now."""

    def __init__(self) -> None:
        self.stop_requested = 0
        self._previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_requested += 1
        if self.stop_requested > 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _say(text: str) -> None:
    print(text, flush=True)


class Coordinator:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.paths = create_run_dir(config)
        self.incidents: list[Incident] = []
        self._next_worker = 0
        self._started = 0.0
        self.user_loads: tuple[ResolvedLoad, ...] = ()
        self.settings: DetectorSettings = resolve_settings(config.detectors, config.scenarios.sequence_deadline)
        self.live = LiveView(config.report.live)
        self.store_path = self.paths.root / "run.sqlite"
        self._telemetry = f"ipc://{self.paths.root}/telemetry.sock"
        self._incident_sender: TelemetrySender | None = None
        self._server_restarts = 0
        self._aggregator_restarts = 0
        self._aggregator_spec: AggregatorSpec | None = None
        self.targets: list[Target] = []
        self._worker_target: dict[int, int] = {}  # worker id -> index of the target it drives
        self.backend: WorkerBackend | None = None
        self.keys: RunKeys | None = None  # CURVE keys of this run (Ray only: telemetry leaves the host)
        self._monitors: dict[int, Handle] = {}  # target index -> its monitor
        self._shares: dict[int, int] = {}  # target index -> how many workers drive it
        self.host: HostSide  # the memory budget's objects on this host (made as the run starts)
        self._oom: OomWatch | None = None  # tells an OOM kill of the server or a worker from other SIGKILLs
        # Bytes of large inputs the engine has in flight now, said with an OOM kill (set by whoever knows).
        self.large_bytes_in_flight: Callable[[], int] | None = None

    def run(self) -> RunOutcome:
        config, paths = self.config, self.paths
        _say(f"run {paths.run_id}: results in {paths.root}")
        _say(f"config: duration {format_duration(config.run.duration)}, seed {config.run.seed}, "
             f"{config.workers.count} workers x {config.workers.concurrency} in flight over {config.workers.protocol}; "
             f"detectors {config.detectors.profile} ({', '.join(self.settings.enabled) or 'none'}), "
             f"window {self.settings.window_s:g} s")
        specs = prepare_repository(config, paths)
        healthy = tuple(s for s in specs if s.name not in FAULTY_MODELS)
        if not config.load:  # with [[load]] entries the check waits until they are resolved
            scenario_table(dict(config.scenarios.weights), specs, config.scenarios)
        self.host = prepare_host_side(config, specs, paths.run_id, paths.root)  # BudgetError: cannot fit
        _say(self.host.plan.describe())
        self.large_bytes_in_flight = self.host.in_flight_bytes
        signals = _Signals()
        try:
            self.targets = self._start_servers(specs)
        except BaseException:
            self.host.close()
            raise
        helpers: dict[str, object] = {}
        workers: dict[int, Handle] = {}
        try:
            self.backend = self._make_backend()
            for target in self.targets:
                server = target.server
                _say(("server" if not target.name else f"server {target.name}")
                     + f": http {server.endpoints.http}, grpc {server.endpoints.grpc}, "
                     f"metrics {server.endpoints.metrics}" + (f", pid {server.pid}" if server.pid else " (attached)"))
            probes = [probe_model(target.endpoints.grpc, spec) for target in self.targets for spec in healthy]
            _say(probe_table(probes))
            if not all(p.ok for p in probes):
                _say("verdict: FAIL (a model did not answer its validated request; no load was sent)")
                return RunOutcome(1, paths)
            base = config.source.parent if config.source else Path(".")
            self.user_loads = resolve_loads(config.load, self.targets[0].endpoints.grpc, base)
            weights = {**dict(config.scenarios.weights), **{load.scenario: load.weight for load in self.user_loads}}
            scenario_table(weights, specs, config.scenarios, self.user_loads)
            for load in self.user_loads:
                _say(f"  {load.scenario}: inputs "
                     f"{', '.join(f'{t.name} {t.datatype}{list(t.dims)}' for t in load.spec.inputs)}"
                     f", data {load.data}" + (f", {len(load.expect)} validation rows" if load.expect else ""))
            self._oom = OomWatch.start()  # the kernel log's position and OOM counter as the load starts
            self._started = time.monotonic()
            deadline = self._started + config.run.duration
            self._start_watch(helpers, specs, deadline)
            assignment = split_workers(config.workers.count, [t.info.weight for t in self.targets])
            self._shares = {i: assignment.count(i) for i in range(len(self.targets))}
            for target_index in assignment:
                self._spawn(workers, specs, target_index, deadline)
            deadline = self._load_started(workers, deadline)
            self._say_placement(workers)
            self._supervise(workers, specs, helpers, deadline, signals)
            self._stop_workers(workers)
        except KeyboardInterrupt:
            self._incident("stopped at once by a second interrupt: plans in flight were cut off; the run stops")
            raise
        finally:
            for handle in workers.values():
                if handle.is_alive():
                    handle.kill()
            for target in self.targets:
                self.host.release_inputs(target.endpoints.grpc)
            for index in range(len(self.targets)):
                self._clean_shm(index)
            self._stop_watch(helpers)
            self.host.close()
            for target in self.targets:
                target.server.stop()
            if self.backend is not None:
                self.backend.close()
            signals.restore()
            self.live.close()
            if self._oom is not None:
                self._oom.close()
        return self._report()

    # -- servers and where the workers run ------------------------------------------------
    def _start_servers(self, specs: tuple[ModelSpec, ...]) -> list[Target]:
        """The [server] one (launched or attached), or each server of the `[[targets]]` fleet."""
        config = self.config
        if not config.targets:
            server = start_server(config, self.paths, specs)
            host = config.server.host if isinstance(server, LaunchedServer) else url_host(config.server.url)
            return [Target(TargetInfo("", server.endpoints, host), server)]
        wanted = [m.name for m in specs] + [entry.model for entry in config.load]
        return [Target(info, attach_server(info.endpoints, wanted, timeout=config.server.startup_timeout))
                for info in fleet(config)]

    def _make_backend(self) -> WorkerBackend:
        cluster = self.config.cluster
        if cluster.backend == "ray":
            self.keys = generate_run_keys()
        try:
            backend = make_backend(cluster, self.paths.run_id, self.keys.client if self.keys else None)
        except ServerSetupError:
            raise
        except Exception as exc:  # Ray could not start or connect: a set-up error, said in one line
            raise ServerSetupError(f"[cluster] backend = \"{cluster.backend}\": cannot start or reach the Ray "
                                   f"cluster at {cluster.address or '(a new local one)'}: {exc}") from None
        if backend.remote_endpoint:
            _say(f"cluster: Ray; workers as actors, telemetry on {backend.remote_endpoint} (CURVE)")
        return backend

    # -- the watch side -------------------------------------------------------------------
    def _start_watch(self, helpers: dict, specs: tuple[ModelSpec, ...], deadline: float) -> None:
        config = self.config
        spec = AggregatorSpec(
            run_id=self.paths.run_id, endpoint=self._telemetry, store_path=str(self.store_path),
            config_json=orjson.dumps({"config": config_to_dict(config), "detectors": self.settings.echo(),
                                      "targets": [{"name": t.name, "http": t.endpoints.http, "host": t.info.host,
                                                   "weight": t.info.weight} for t in self.targets]},
                                     default=str).decode(),
            started_wall=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            origin_ns=int(self._started * 1e9), run_s=config.run.duration, settings=self.settings,
            timings=model_timings(specs), prometheus_port=config.report.prometheus_port,
            remote_endpoint=self.backend.remote_endpoint if self.backend else "",
            curve=self.keys.server if self.keys else None,
        )
        self._aggregator_spec = spec
        helpers["aggregator"] = start_aggregator(spec)
        self._incident_sender = TelemetrySender(self._telemetry, "coordinator", RecordBuffer((), (), ""))
        for index in range(len(self.targets)):
            self._start_monitor(index, deadline)
        waited = time.monotonic() + 30.0
        while not self.store_path.exists() and time.monotonic() < waited and helpers["aggregator"].is_alive():
            time.sleep(0.05)
        if not self.store_path.exists():
            raise RuntimeError(f"the aggregator did not start (exit status {helpers['aggregator'].exitcode})")

    def _start_monitor(self, index: int, deadline: float) -> None:
        """A launched server's monitor runs here; an attached server's in Ray mode runs on the
        server's node (it finds the server by its port); else here, without /proc."""
        target = self.targets[index]
        server = target.server
        launched = isinstance(server, LaunchedServer)
        remote = bool(self.backend and self.backend.remote_endpoint) and not launched
        assert self.backend is not None
        self._monitors[index] = self.backend.start_monitor(MonitorSpec(
            server_pid=server.pid, metrics_url=server.endpoints.metrics, http_url=server.endpoints.http,
            run_id=self.paths.run_id,
            shm_prefixes=(f"tee_{self.paths.run_id}_", backend_region_prefix(self.paths.run_id)),
            interval_s=self.settings.sample_interval_s,
            telemetry_endpoint=self.backend.remote_endpoint if remote else self._telemetry,
            deadline_s=max(0.0, deadline - time.monotonic()) + AGGREGATOR_STOP_S + WORKER_START_S,
            series_prefix=f"target/{target.name}/" if target.name else "",
            telemetry_keys=self.keys.client if remote and self.keys else None,
            server_port=int(server.endpoints.http.rsplit(":", 1)[1]) if remote else 0,
            budget_path=self.host.path if launched and index == 0 else "",  # one monitor holds back large plans
        ), target.info, launched)

    def _restart_monitor(self, index: int, deadline: float) -> None:
        """A restarted server is a new process: the monitor follows it from scratch (its series
        start again under the new pid, so the drop to a fresh server is never read as a trend)."""
        old = self._monitors.get(index)
        if old is not None and old.is_alive():
            old.stop()
            old.join(10.0)
            if old.is_alive():
                old.kill()
                old.join(5.0)
        self._start_monitor(index, deadline)

    def _restart_aggregator(self, helpers: dict) -> bool:
        """Start a new aggregator on the same store and socket: it goes on from the last commit
        (the workers' sockets reconnect by themselves; what was sent meanwhile is counted lost)."""
        status = helpers["aggregator"].exitcode
        if self._aggregator_restarts >= AGGREGATOR_RESTARTS:
            self._incident(f"the aggregator exited (status {status}) for the {self._aggregator_restarts + 1}th time; "
                           "the run stops")
            return False
        self._aggregator_restarts += 1
        helpers["aggregator"] = start_aggregator(self._aggregator_spec)
        # Said once it listens again, so the incident reaches the store.
        self._incident(f"the aggregator exited (status {status}); started again, its open windows are lost")
        return True

    def _stop_watch(self, helpers: dict) -> None:
        """The monitors first (nothing more to sample), then the aggregator: it drains, closes the
        last windows, evaluates once more and commits."""
        for monitor in self._monitors.values():
            monitor.stop()
        for index, monitor in self._monitors.items():
            monitor.join(10.0)
            if monitor.is_alive():
                self._incident(f"the monitor{self._of(index)} did not stop in time; killed")
                monitor.kill()
                monitor.join(5.0)
        self._monitors.clear()
        process = helpers.get("aggregator")
        if process is not None and process.is_alive():
            process.terminate()
            process.join(AGGREGATOR_STOP_S)
            if process.is_alive():
                self._incident("the aggregator did not stop in time; killed")
                process.kill()
                process.join(5.0)
        if self._incident_sender is not None:
            self._incident_sender.close()
            self._incident_sender = None

    def _of(self, index: int) -> str:
        """" of server <name>" in a fleet, "" with one server: incidents read as before."""
        name = self.targets[index].name
        return f" of server {name}" if name else ""

    # -- workers --------------------------------------------------------------------------
    def _spawn(self, workers: dict[int, Handle], models: tuple[ModelSpec, ...], target_index: int,
               deadline: float) -> None:
        index = self._next_worker
        self._next_worker += 1
        block = self.config.workers.correlation_id_block
        target = self.targets[target_index]
        endpoints = target.endpoints
        assert self.backend is not None
        remote = bool(self.backend.remote_endpoint)
        spec = WorkerSpec(
            worker_id=index, run_id=self.paths.run_id, seed=self.config.run.seed, id_base=1 + index * block,
            id_block=block, grpc_url=endpoints.grpc, http_url=endpoints.http, protocol=self.config.workers.protocol,
            concurrency=self.config.workers.concurrency, models=models, scenarios=self.config.scenarios,
            # The coordinator ends the load (SIGTERM at its deadline, which may move later by up to
            # WORKER_START_S once the workers run); the worker's own deadline is only a backstop.
            telemetry_endpoint=self.backend.remote_endpoint if remote else self._telemetry,
            deadline_s=max(0.0, deadline - time.monotonic()) + WORKER_START_S,
            shm_mode=self.config.workers.shm,
            user_loads=self.user_loads,
            load=self.config.workers.load, rate=self.config.workers.rate,
            max_outstanding=self.config.workers.max_outstanding,
            target=target.name, telemetry_keys=self.keys.client if remote and self.keys else None,
            event_loop=self.config.workers.event_loop,
            budget_path="" if remote else self.host.path, host_inputs=() if remote else self.host.host_inputs,
        )
        workers[index] = self.backend.start_worker(spec, target.info)
        self._worker_target[index] = target_index

    def _supervise(self, workers: dict[int, Handle], models, helpers: dict, deadline: float,
                   signals: _Signals) -> None:
        reader = RunStore.open(self.store_path)
        try:
            while time.monotonic() < deadline and not signals.stop_requested:
                time.sleep(LIVE_EVERY_S)
                for index, handle in list(workers.items()):
                    if not handle.is_alive() and time.monotonic() < deadline - 1.0:
                        said = (self._oom.explain(handle.pid, f"worker {index}", self.large_bytes_in_flight)
                                if self._oom is not None and isinstance(handle, ProcessHandle) and handle.pid
                                and handle.process.exitcode == -signal.SIGKILL else "")
                        stops = self._oom is not None and self._oom.stops_run
                        self._incident(f"worker {index} {handle.exit_text()}" + ("" if stops else "; replaced")
                                       + (f": {said}" if said else ""))
                        self._tell_aggregator(WORKER_GONE, f"worker-{index}")
                        target_index = self._worker_target.pop(index)
                        self._clean_shm(target_index, worker_id=index)
                        del workers[index]
                        if stops:
                            break
                        self._spawn(workers, models, target_index, deadline)
                if self._oom is not None and self._oom.stops_run:
                    self._incident(self._oom.stop_text())
                    break
                lost = [i for i, t in enumerate(self.targets) if not t.server.is_running()]
                if any(not self._recover_server(workers, models, i, helpers, deadline) for i in lost):
                    break
                if not helpers["aggregator"].is_alive() and not self._restart_aggregator(helpers):
                    break
                status = reader.status()
                self._kill_silent_workers(workers, status.get("heartbeat_age_s", {}))
                elapsed = time.monotonic() - self._started
                self.live.update(status, elapsed, max(0.0, deadline - time.monotonic()))
                if status.get("fatal"):
                    self._incident(f"fatal verdict: {status['fatal'][0]}; the run stops")
                    break
        finally:
            reader.close()
        if signals.stop_requested:
            self._incident("stop requested by signal; stopping gracefully")

    def _load_started(self, workers: dict[int, Handle], deadline: float) -> float:
        """Wait for every first worker's first heartbeat, then count the run's duration from there:
        on a loaded host a worker's start (imports, clients, shm registration) takes seconds, and a
        short run must not end before its load began. The supervisor handles workers that die."""
        wanted = {f"worker-{index}" for index in workers}
        reader = RunStore.open(self.store_path)
        try:
            until = time.monotonic() + WORKER_START_S
            while time.monotonic() < until and any(p.is_alive() for p in workers.values()):
                if wanted <= set(reader.status().get("heartbeat_age_s", {})):
                    break
                time.sleep(0.2)
            else:
                return deadline
        finally:
            reader.close()
        return max(deadline, time.monotonic() + self.config.run.duration)

    def _say_placement(self, workers: dict[int, Handle]) -> None:
        """Ray: where each worker landed and why (into the store as events, and said)."""
        if self.backend is None or not hasattr(self.backend, "describe"):
            return
        for index, handle in sorted(workers.items()):
            text = self.backend.describe(index, handle)
            _say(f"placement: {text}")
            if self._incident_sender is not None:
                self._incident_sender.event("placement", f"worker-{index}", "", text)  # one key each: all kept

    def _kill_silent_workers(self, workers: dict[int, Handle], heartbeat_ages: dict[str, float]) -> None:
        """A worker alive but silent (a deadlocked event loop, a stuck native call) drives nothing
        and reports nothing: it is killed here, and replaced like a dead one on the next pass."""
        for index, handle in workers.items():
            age = heartbeat_ages.get(f"worker-{index}")
            if age is not None and age > self.config.workers.silent_timeout and handle.is_alive():
                self._incident(f"worker {index} sent no heartbeat for {age:.0f} s; killed")
                handle.kill()
                handle.join(5.0)

    def _recover_server(self, workers: dict[int, Handle], models, index: int, helpers: dict,
                        deadline: float) -> bool:
        """A server died (launched) or stopped answering (attached): stop its load, bring it back
        (start it again on its ports, or wait for it with backoff), clean what its old workers
        left, and start fresh workers for it; they register their regions with the new server.
        The other servers of a fleet keep their load. False when it does not come back: the run stops."""
        server = self.targets[index].server
        launched = isinstance(server, LaunchedServer)
        if launched:
            status = server.returncode
            said = (self._oom.explain(server.pid, "tritonserver", self.large_bytes_in_flight)
                    if self._oom is not None and status == -signal.SIGKILL and server.pid else "")
            self._incident(f"the server exited (status {status})" + (f": {said}" if said else ""))
        else:
            self._incident(f"the server at {server.endpoints.http} stopped answering")
        ours = {w: workers.pop(w) for w, t in list(self._worker_target.items()) if t == index and w in workers}
        self._halt_workers(ours)
        for w in ours:
            self._worker_target.pop(w, None)
        if launched:
            if self._oom is not None and self._oom.stops_run:
                self._incident(self._oom.stop_text())
                return False
            if self._server_restarts >= self.config.server.restarts:
                self._incident(f"no server restart left ([server] restarts = {self.config.server.restarts}); "
                               "the run stops")
                return False
            self._server_restarts += 1
            try:
                server.restart()
            except ServerSetupError as exc:
                self._incident(f"the server could not be started again; the run stops: {exc}")
                return False
            self._incident(f"the server runs again (restart {self._server_restarts} of "
                           f"{self.config.server.restarts}, pid {server.pid})")
            self._restart_monitor(index, deadline)
        else:
            lost_at = time.monotonic()
            wait = min(self.config.server.reconnect_timeout, max(0.0, deadline - lost_at))
            if not server.wait_back(wait):
                self._incident(f"the server did not come back within {wait:.0f} s; the run stops")
                return False
            self._incident(f"the server answers again after {time.monotonic() - lost_at:.1f} s")
        self._clean_shm(index)
        self.host.renew_inputs()  # the cleanup took them with the rest of the run's /dev/shm
        for _ in range(self._shares[index]):
            self._spawn(workers, models, index, deadline)
        return True

    def _halt_workers(self, workers: dict[int, Handle], grace_s: float = 10.0) -> None:
        """Stop these workers now (their server is gone: nothing they would finish counts)."""
        for handle in workers.values():
            if handle.is_alive():
                handle.stop()
        until = time.monotonic() + grace_s
        while time.monotonic() < until and any(p.is_alive() for p in workers.values()):
            time.sleep(0.1)
        for handle in workers.values():
            if handle.is_alive():
                handle.kill()
                handle.join(5.0)
        workers.clear()

    def _stop_workers(self, workers: dict[int, Handle]) -> None:
        self._tell_aggregator(LOAD_STOPPED, "the coordinator stops the load")  # leak and drift: loaded time only
        for handle in workers.values():
            if handle.is_alive():
                handle.stop()  # graceful: plans finish, final heartbeat
        grace = time.monotonic() + 2 * self.config.scenarios.sequence_deadline + 30
        while time.monotonic() < grace and any(p.is_alive() for p in workers.values()):
            time.sleep(0.2)
        for index, handle in workers.items():
            if handle.is_alive():
                self._incident(f"worker {index} did not stop in time; killed")
                handle.kill()

    def _clean_shm(self, target_index: int, worker_id: int | None = None) -> None:
        """Unregister and unlink, on the server's node, what a dead worker (or, at the end, any
        worker) of this server left behind."""
        target = self.targets[target_index]
        try:
            if self.backend is not None:
                report = self.backend.clean_shm(self.paths.run_id, target.info, worker_id)
            else:
                from .cluster.backend import clean_here

                report = clean_here(self.paths.run_id, target.endpoints.grpc, worker_id)
        except Exception as exc:  # the server may be gone; /dev/shm is cleaned on the next pass
            self._incident(f"shared-memory cleanup{self._of(target_index)} failed: {exc}")
            return
        if report.unregistered or report.unlinked:
            whose = f"worker {worker_id}" if worker_id is not None else "the run"
            self._incident(f"shared memory left by {whose}: unregistered {len(report.unregistered)}, "
                           f"unlinked {len(report.unlinked)}")

    def _incident(self, what: str) -> None:
        at = time.monotonic() - self._started if self._started else 0.0
        self.incidents.append(Incident(at, what))
        self.live.say(f"[{hhmmss(at)}] incident: {what}")
        self._tell_aggregator(INCIDENT, what)  # into the store, through the aggregator

    def _tell_aggregator(self, what: str, text: str) -> None:
        if self._incident_sender is not None:
            # Every incident with its text: the sender's per-kind text limit (meant for a flood of
            # request errors) would send the fourth incident of a run as a bare count.
            self._incident_sender.event(what, "", "", text, always_text=True)

    def _report(self) -> RunOutcome:
        if not self.store_path.exists():
            _say("verdict: FAIL (nothing was recorded)")
            return RunOutcome(1, self.paths, self.incidents)
        report = load_report(self.paths.root)
        written = write_reports(self.paths.root, report, self.config.report.formats)
        summary = render_summary(report)
        if "terminal" in self.config.report.formats:
            sys.stdout.write(summary)
        email = self.config.report.email
        if email.smtp_host:
            page = self.paths.root / "report.html"
            try:
                _say(send_report(email, summary, page.read_text() if page in written else render_page(self.paths.root)))
            except MailError as exc:  # the run's verdict stands; the reason is said
                _say(f"e-mail: {exc}")
        _say(f"report: {self.paths.root} (run.sqlite; python -m engine report {self.paths.root} rebuilds it)")
        return RunOutcome(report.exit_code, self.paths, self.incidents)


def run(config: Config) -> int:
    try:
        return Coordinator(config).run().exit_code
    except KeyboardInterrupt:
        print("stopped at once by a second interrupt; the run directory keeps what was written", file=sys.stderr)
        return 1


__all__ = ["Coordinator", "Incident", "RunOutcome", "run"]
