"""The run: set up, prove every model answers, drive the load for the configured duration with
supervised worker processes, watch it (the aggregator and the monitor, each its own process),
and say what happened.

Graceful on SIGINT/SIGTERM (stop sending, let plans finish, final windows, report); a second
SIGINT stops at once. A worker that dies is an incident: it is replaced by a new worker with a
fresh correlation-id block, and the run goes on. A server that dies is started again on its
ports ([server] restarts), an attached one that stops answering is waited for with backoff
([server] reconnect_timeout); the load stops meanwhile and starts again with fresh workers. Either
is an incident that fails the run: a server that goes away under load is a finding. A verdict of a detector listed as fatal ends
the run.
"""

from __future__ import annotations

import datetime
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import tritonclient.grpc as grpcclient

from model_repo_gen import ModelSpec
from model_repo_gen.options import FAULTY_MODELS
from shm import cleanup
from workers.sender import TelemetrySender
from workers.telemetry import RecordBuffer
from workers.user_load import ResolvedLoad, resolve_loads
from workers.worker import WorkerSpec, scenario_table, start_worker

from .aggregator.service import INCIDENT, LOAD_STOPPED, WORKER_GONE, AggregatorSpec, start_aggregator
from .config import Config, config_to_dict, format_duration
from .detectors.settings import DetectorSettings, resolve_settings
from .detectors.stall import ModelTiming
from .live_view import LiveView
from .monitor import MonitorSpec, start_monitor
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
from .server import LaunchedServer, ServerSetupError
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
        signals = _Signals()
        server = start_server(config, paths, specs)
        helpers: dict[str, object] = {}
        workers: dict[int, object] = {}
        try:
            _say(f"server: http {server.endpoints.http}, grpc {server.endpoints.grpc}, "
                 f"metrics {server.endpoints.metrics}" + (f", pid {server.pid}" if server.pid else " (attached)"))
            probes = [probe_model(server.endpoints.grpc, spec) for spec in healthy]
            _say(probe_table(probes))
            if not all(p.ok for p in probes):
                _say("verdict: FAIL (a model did not answer its validated request; no load was sent)")
                return RunOutcome(1, paths)
            base = config.source.parent if config.source else Path(".")
            self.user_loads = resolve_loads(config.load, server.endpoints.grpc, base)
            weights = {**dict(config.scenarios.weights), **{load.scenario: load.weight for load in self.user_loads}}
            scenario_table(weights, specs, config.scenarios, self.user_loads)
            for load in self.user_loads:
                _say(f"  {load.scenario}: inputs {', '.join(f'{t.name} {t.datatype}{list(t.dims)}' for t in load.spec.inputs)}"
                     f", data {load.data}" + (f", {len(load.expect)} validation rows" if load.expect else ""))
            self._started = time.monotonic()
            deadline = self._started + config.run.duration
            self._start_watch(helpers, specs, server, deadline)
            for _ in range(config.workers.count):
                self._spawn(workers, specs, server.endpoints, deadline)
            deadline = self._load_started(workers, deadline)
            self._supervise(workers, specs, server, helpers, deadline, signals)
            self._stop_workers(workers)
        except KeyboardInterrupt:
            self._incident("stopped at once by a second interrupt: plans in flight were cut off; the run stops")
            raise
        finally:
            for process in workers.values():
                if process.is_alive():  # type: ignore[attr-defined]
                    process.kill()  # type: ignore[attr-defined]
            self._clean_shm(server.endpoints)
            self._stop_watch(helpers)
            server.stop()
            signals.restore()
            self.live.close()
        return self._report()

    # -- the watch side -------------------------------------------------------------------
    def _start_watch(self, helpers: dict, specs: tuple[ModelSpec, ...], server, deadline: float) -> None:
        config = self.config
        spec = AggregatorSpec(
            run_id=self.paths.run_id, endpoint=self._telemetry, store_path=str(self.store_path),
            config_json=orjson.dumps({"config": config_to_dict(config), "detectors": self.settings.echo()},
                                     default=str).decode(),
            started_wall=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            origin_ns=int(self._started * 1e9), run_s=config.run.duration, settings=self.settings,
            timings=model_timings(specs), prometheus_port=config.report.prometheus_port,
        )
        self._aggregator_spec = spec
        helpers["aggregator"] = start_aggregator(spec)
        self._incident_sender = TelemetrySender(self._telemetry, "coordinator", RecordBuffer((), (), ""))
        self._start_monitor(helpers, server, deadline)
        waited = time.monotonic() + 30.0
        while not self.store_path.exists() and time.monotonic() < waited and helpers["aggregator"].is_alive():
            time.sleep(0.05)
        if not self.store_path.exists():
            raise RuntimeError(f"the aggregator did not start (exit status {helpers['aggregator'].exitcode})")

    def _start_monitor(self, helpers: dict, server, deadline: float) -> None:
        helpers["monitor"] = start_monitor(MonitorSpec(
            server_pid=server.pid, metrics_url=server.endpoints.metrics, http_url=server.endpoints.http,
            run_id=self.paths.run_id, shm_prefixes=(f"tee_{self.paths.run_id}_", backend_region_prefix(self.paths.run_id)),
            interval_s=self.settings.sample_interval_s, telemetry_endpoint=self._telemetry,
            deadline_s=max(0.0, deadline - time.monotonic()) + AGGREGATOR_STOP_S + WORKER_START_S,
        ))

    def _restart_monitor(self, helpers: dict, server, deadline: float) -> None:
        """A restarted server is a new process: the monitor follows it from scratch (its series
        start again under the new pid, so the drop to a fresh server is never read as a trend)."""
        old = helpers.get("monitor")
        if old is not None and old.is_alive():
            old.terminate()
            old.join(10.0)
            if old.is_alive():
                old.kill()
                old.join(5.0)
        self._start_monitor(helpers, server, deadline)

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
        """The monitor first (nothing more to sample), then the aggregator: it drains, closes the
        last windows, evaluates once more and commits."""
        for name in ("monitor", "aggregator"):
            process = helpers.get(name)
            if process is None or not process.is_alive():
                continue
            process.terminate()
            process.join(AGGREGATOR_STOP_S if name == "aggregator" else 10.0)
            if process.is_alive():
                self._incident(f"the {name} did not stop in time; killed")
                process.kill()
                process.join(5.0)
        if self._incident_sender is not None:
            self._incident_sender.close()
            self._incident_sender = None

    # -- workers --------------------------------------------------------------------------
    def _spawn(self, workers: dict, models: tuple[ModelSpec, ...], endpoints, deadline: float) -> None:
        index = self._next_worker
        self._next_worker += 1
        block = self.config.workers.correlation_id_block
        spec = WorkerSpec(
            worker_id=index, run_id=self.paths.run_id, seed=self.config.run.seed, id_base=1 + index * block,
            id_block=block, grpc_url=endpoints.grpc, http_url=endpoints.http, protocol=self.config.workers.protocol,
            concurrency=self.config.workers.concurrency, models=models, scenarios=self.config.scenarios,
            # The coordinator ends the load (SIGTERM at its deadline, which may move later by up to
            # WORKER_START_S once the workers run); the worker's own deadline is only a backstop.
            telemetry_endpoint=self._telemetry, deadline_s=max(0.0, deadline - time.monotonic()) + WORKER_START_S,
            shm_mode=self.config.workers.shm,
            user_loads=self.user_loads,
            load=self.config.workers.load, rate=self.config.workers.rate,
            max_outstanding=self.config.workers.max_outstanding,
        )
        workers[index] = start_worker(spec)

    def _supervise(self, workers: dict, models, server, helpers: dict, deadline: float, signals: _Signals) -> None:
        reader = RunStore.open(self.store_path)
        try:
            while time.monotonic() < deadline and not signals.stop_requested:
                time.sleep(LIVE_EVERY_S)
                for index, process in list(workers.items()):
                    if not process.is_alive() and time.monotonic() < deadline - 1.0:
                        self._incident(f"worker {index} exited with status {process.exitcode}; replaced")
                        self._tell_aggregator(WORKER_GONE, f"worker-{index}")
                        self._clean_shm(server.endpoints, worker_id=index)
                        del workers[index]
                        self._spawn(workers, models, server.endpoints, deadline)
                if not server.is_running() and not self._recover_server(workers, models, server, helpers, deadline):
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

    def _load_started(self, workers: dict, deadline: float) -> float:
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

    def _kill_silent_workers(self, workers: dict, heartbeat_ages: dict[str, float]) -> None:
        """A worker alive but silent (a deadlocked event loop, a stuck native call) drives nothing
        and reports nothing: it is killed here, and replaced like a dead one on the next pass."""
        for index, process in workers.items():
            age = heartbeat_ages.get(f"worker-{index}")
            if age is not None and age > self.config.workers.silent_timeout and process.is_alive():
                self._incident(f"worker {index} sent no heartbeat for {age:.0f} s; killed")
                process.kill()
                process.join(5.0)

    def _recover_server(self, workers: dict, models, server, helpers: dict, deadline: float) -> bool:
        """The server died (launched) or stopped answering (attached): stop the load, bring the
        server back (start it again on its ports, or wait for it with backoff), clean what the old
        workers left, and start fresh workers; they register their regions with the new server.
        False when it does not come back: the run stops."""
        launched = isinstance(server, LaunchedServer)
        if launched:
            self._incident(f"the server exited (status {server.returncode})")
        else:
            self._incident(f"the server at {server.endpoints.http} stopped answering")
        self._halt_workers(workers)
        if launched:
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
            self._restart_monitor(helpers, server, deadline)
        else:
            lost_at = time.monotonic()
            wait = min(self.config.server.reconnect_timeout, max(0.0, deadline - lost_at))
            if not server.wait_back(wait):
                self._incident(f"the server did not come back within {wait:.0f} s; the run stops")
                return False
            self._incident(f"the server answers again after {time.monotonic() - lost_at:.1f} s")
        self._clean_shm(server.endpoints)
        for _ in range(self.config.workers.count):
            self._spawn(workers, models, server.endpoints, deadline)
        return True

    def _halt_workers(self, workers: dict, grace_s: float = 10.0) -> None:
        """Stop every worker now (their server is gone: nothing they would finish counts)."""
        for process in workers.values():
            if process.is_alive():
                process.terminate()
        until = time.monotonic() + grace_s
        while time.monotonic() < until and any(p.is_alive() for p in workers.values()):
            time.sleep(0.1)
        for process in workers.values():
            if process.is_alive():
                process.kill()
                process.join(5.0)
        workers.clear()

    def _stop_workers(self, workers: dict) -> None:
        self._tell_aggregator(LOAD_STOPPED, "the coordinator stops the load")  # leak and drift: loaded time only
        for process in workers.values():
            if process.is_alive():
                process.terminate()  # graceful: plans finish, final heartbeat
        grace = time.monotonic() + 2 * self.config.scenarios.sequence_deadline + 30
        while time.monotonic() < grace and any(p.is_alive() for p in workers.values()):
            time.sleep(0.2)
        for index, process in workers.items():
            if process.is_alive():
                self._incident(f"worker {index} did not stop in time; killed")
                process.kill()

    def _clean_shm(self, endpoints, worker_id: int | None = None) -> None:
        """Unregister and unlink what a dead worker (or, at the end, any worker) left behind."""
        client = grpcclient.InferenceServerClient(endpoints.grpc)
        try:
            report = cleanup(self.paths.run_id, client, worker_id=worker_id)
        except Exception as exc:  # the server may be gone; /dev/shm is cleaned on the next pass
            self._incident(f"shared-memory cleanup failed: {exc}")
            return
        finally:
            client.close()
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
            self._incident_sender.event(what, "", "", text)
            self._incident_sender.flush_events()

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
