"""The run: set up, prove every model answers, drive the load for the configured duration with
supervised worker processes, and say what happened.

Graceful on SIGINT/SIGTERM (stop sending, let plans finish, final totals, report); a second
SIGINT stops at once. A worker that dies is an incident: it is replaced by a new worker with a
fresh correlation-id block, and the run goes on.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tritonclient.grpc as grpcclient

from model_repo_gen import ModelSpec
from model_repo_gen.options import FAULTY_MODELS
from shm import cleanup
from workers.user_load import ResolvedLoad, resolve_loads
from workers.worker import WorkerSpec, scenario_table, start_worker

from .collector import Collector
from .config import Config, format_duration
from .probe import probe_model, probe_table
from .run_setup import RunPaths, create_run_dir, prepare_repository, start_server
from .stress_report import hhmmss, render_table

PROGRESS_EVERY_S = 10.0


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

    def run(self) -> RunOutcome:
        config, paths = self.config, self.paths
        _say(f"run {paths.run_id}: results in {paths.root}")
        _say(f"config: duration {format_duration(config.run.duration)}, seed {config.run.seed}, "
             f"{config.workers.count} workers x {config.workers.concurrency} in flight over {config.workers.protocol}")
        specs = prepare_repository(config, paths)
        healthy = tuple(s for s in specs if s.name not in FAULTY_MODELS)
        if not config.load:  # with [[load]] entries the check waits until they are resolved
            scenario_table(dict(config.scenarios.weights), healthy, config.scenarios)
        signals = _Signals()
        server = start_server(config, paths, specs)
        collector = Collector(f"ipc://{paths.root}/telemetry.sock")
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
            scenario_table(weights, healthy, config.scenarios, self.user_loads)
            for load in self.user_loads:
                _say(f"  {load.scenario}: inputs {', '.join(f'{t.name} {t.datatype}{list(t.dims)}' for t in load.spec.inputs)}"
                     f", data {load.data}" + (f", {len(load.expect)} validation rows" if load.expect else ""))
            self._started = time.monotonic()
            deadline = self._started + config.run.duration
            for _ in range(config.workers.count):
                self._spawn(workers, healthy, server.endpoints, collector.endpoint, deadline)
            self._supervise(workers, healthy, server, collector, deadline, signals)
            self._stop_workers(workers, collector)
        finally:
            for process in workers.values():
                if process.is_alive():  # type: ignore[attr-defined]
                    process.kill()  # type: ignore[attr-defined]
            self._clean_shm(server.endpoints)
            server.stop()
            signals.restore()
            collector.poll(0.2)
            collector.close()
        return self._report(collector)

    def _spawn(self, workers: dict, models: tuple[ModelSpec, ...], endpoints, telemetry: str,
               deadline: float) -> None:
        index = self._next_worker
        self._next_worker += 1
        block = self.config.workers.correlation_id_block
        spec = WorkerSpec(
            worker_id=index, run_id=self.paths.run_id, seed=self.config.run.seed, id_base=1 + index * block,
            id_block=block, grpc_url=endpoints.grpc, http_url=endpoints.http, protocol=self.config.workers.protocol,
            concurrency=self.config.workers.concurrency, models=models, scenarios=self.config.scenarios,
            telemetry_endpoint=telemetry, deadline_s=max(0.0, deadline - time.monotonic()),
            shm_mode=self.config.workers.shm,
            user_loads=self.user_loads,
            load=self.config.workers.load, rate=self.config.workers.rate,
            max_outstanding=self.config.workers.max_outstanding,
        )
        workers[index] = start_worker(spec)

    def _supervise(self, workers: dict, models, server, collector: Collector, deadline: float,
                   signals: _Signals) -> None:
        next_progress = time.monotonic() + PROGRESS_EVERY_S
        while time.monotonic() < deadline and not signals.stop_requested:
            collector.poll(0.5)
            for index, process in list(workers.items()):
                if not process.is_alive() and time.monotonic() < deadline - 1.0:
                    self._incident(f"worker {index} exited with status {process.exitcode}; replaced")
                    self._clean_shm(server.endpoints, worker_id=index)
                    del workers[index]
                    self._spawn(workers, models, server.endpoints, collector.endpoint, deadline)
            if server.pid is not None and not server.is_running():
                self._incident(f"the server exited (status {server.returncode}); the run stops")
                break
            if time.monotonic() >= next_progress:
                next_progress += PROGRESS_EVERY_S
                self._progress(collector, deadline)
        if signals.stop_requested:
            self._incident("stop requested by signal; stopping gracefully")

    def _stop_workers(self, workers: dict, collector: Collector) -> None:
        for process in workers.values():
            if process.is_alive():
                process.terminate()  # graceful: plans finish, final heartbeat
        grace = time.monotonic() + 2 * self.config.scenarios.sequence_deadline + 30
        while time.monotonic() < grace and any(p.is_alive() for p in workers.values()):
            collector.poll(0.2)
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
        _say(f"[{hhmmss(at)}] incident: {what}")

    def _progress(self, collector: Collector, deadline: float) -> None:
        elapsed = time.monotonic() - self._started
        done = sum(collector.requests.values())
        failed = sum(t.failed for t in collector.scenario_totals())
        _say(f"[{hhmmss(elapsed)}] {done} requests ({done / max(elapsed, 1e-9):.0f}/s), "
             f"{failed} failed scenarios, {hhmmss(max(0.0, deadline - time.monotonic()))} left")

    def _report(self, collector: Collector) -> RunOutcome:
        duration = time.monotonic() - self._started
        totals = collector.scenario_totals()
        table = render_table(totals, duration)
        (self.paths.root / "stress_report.txt").write_text(table)
        _say(table)
        for (what, scenario), count in sorted(collector.event_counts.items()):
            texts = collector.events.get((what, scenario)) or [""]
            where = f" in {scenario}" if scenario else ""
            _say(f"{what}{where}: {count} (first: {texts[0][:300]})")
        if collector.lost_messages:
            _say(f"telemetry: {collector.lost_messages} messages lost")
        failed = sum(t.failed for t in totals)
        ok = failed == 0 and not any("server exited" in i.what for i in self.incidents)
        _say(f"verdict: {'PASS' if ok else 'FAIL'}; {len(self.incidents)} incidents; report {self.paths.root}")
        return RunOutcome(0 if ok else 1, self.paths, self.incidents)


def run(config: Config) -> int:
    try:
        return Coordinator(config).run().exit_code
    except KeyboardInterrupt:
        print("stopped at once by a second interrupt; the run directory keeps what was written", file=sys.stderr)
        return 1


__all__ = ["Coordinator", "Incident", "RunOutcome", "run"]
