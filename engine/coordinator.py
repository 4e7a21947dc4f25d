"""The run: set up, prove every model answers, drive the load for the configured duration with
supervised worker processes, watch it (the aggregator and the monitors, each its own process),
and say what happened. The parts are in engine/runner/; this module composes them.

Graceful on SIGINT/SIGTERM (stop sending, let plans finish, final windows, report); a second
SIGINT stops at once. A worker that dies is an incident: it is replaced by a new worker with a
fresh correlation-id block, and the run goes on. A server that dies is started again on its
ports ([server] restarts), an attached one that stops answering is waited for with backoff
([server] reconnect_timeout); the load stops meanwhile and starts again with fresh workers. Either
is an incident that fails the run: a server that goes away under load is a finding. A verdict of a
detector listed as fatal ends the run.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from model_repo_gen.options import FAULTY_MODELS
from workers.process_setup import set_process_title
from workers.user_load import resolve_loads
from workers.worker import scenario_table

from .config import Config, format_duration
from .detectors.settings import resolve_settings
from .live_status import LiveStatus
from .live_view import LiveView
from .memory_budget import prepare_host_side
from .oom import OomWatch
from .probe import probe_model, probe_table
from .report import load_report, render_page, render_summary, write_reports
from .report.mail import MailError, send_report
from .run_setup import RunPaths, create_run_dir, prepare_repository
from .runner.context import RunContext, Say
from .runner.incidents import Incident, IncidentLog
from .runner.pool import WORKER_START_S, WorkerPool
from .runner.recovery import ServerRecovery
from .runner.signals import StopSignals
from .runner.targets import describe_targets, start_backend, start_targets
from .runner.watch import AGGREGATOR_STOP_S, WatchProcesses
from .store import RunStore

LIVE_EVERY_S = 1.0
# How long the monitors sample past the load's deadline: the workers' start may move it later,
# and the aggregator's last windows still want the server's resources.
MONITOR_OUTLIVE_S = AGGREGATOR_STOP_S + WORKER_START_S


@dataclass
class RunOutcome:
    exit_code: int
    paths: RunPaths
    incidents: list[Incident] = field(default_factory=list)


class Coordinator:
    def __init__(self, config: Config, live: LiveView, stop: threading.Event | None = None) -> None:
        self.live = live
        self._stop = stop
        settings = resolve_settings(config.detectors, config.scenarios.sequence_deadline)
        self.ctx = RunContext(config, create_run_dir(config), settings, live.say)
        self.incidents = IncidentLog(live.say, self.ctx.elapsed)

    def run(self) -> RunOutcome:
        ctx, config, say = self.ctx, self.ctx.config, self.ctx.say
        say(f"run {ctx.paths.run_id}: results in {ctx.paths.root}")
        say(f"config: duration {format_duration(config.run.duration)}, seed {config.run.seed}, "
            f"{config.workers.count} workers x {config.workers.concurrency} in flight over {config.workers.protocol}; "
            f"detectors {config.detectors.profile} ({', '.join(ctx.settings.enabled) or 'none'}), "
            f"window {ctx.settings.window_s:g} s")
        ctx.models = prepare_repository(config, ctx.paths)
        if not config.load:  # with [[load]] entries the check waits until they are resolved
            scenario_table(dict(config.scenarios.weights), ctx.models, config.scenarios)
        host = ctx.host = prepare_host_side(config, ctx.models, ctx.paths.run_id, ctx.paths.root)  # BudgetError
        say(host.plan.describe())
        signals = StopSignals(self._stop)
        try:
            ctx.targets = start_targets(ctx)
        except BaseException:
            host.close()
            signals.restore()
            raise
        pool = WorkerPool(ctx, self.incidents)
        watch = WatchProcesses(ctx, self.incidents)
        try:
            ctx.backend = start_backend(ctx)
            for line in describe_targets(ctx.targets):
                say(line)
            if not self._models_answer():
                say("verdict: FAIL (a model did not answer its validated request; no load was sent)")
                return RunOutcome(1, ctx.paths)
            self._resolve_loads()
            ctx.oom = OomWatch.start()  # the kernel log's position and OOM counter as the load starts
            ctx.load_started = ctx.clock()
            deadline = ctx.load_started + config.run.duration
            watch.start(deadline, MONITOR_OUTLIVE_S)
            pool.start(deadline)
            deadline = pool.wait_first_heartbeats(deadline)
            pool.say_placement()
            self._supervise(pool, watch, ServerRecovery(ctx, self.incidents, pool, watch), deadline, signals)
            pool.stop()
        except KeyboardInterrupt:
            self.incidents.add("stopped at once by a second interrupt: plans in flight were cut off; the run stops")
            raise
        finally:
            pool.kill_all()
            for target in ctx.targets:
                host.release_inputs(target.endpoints.grpc)
            for index in range(len(ctx.targets)):
                pool.clean_shm(index)
            watch.stop()
            host.close()
            for target in ctx.targets:
                target.server.stop()
            if ctx.backend is not None:
                ctx.backend.close()
            signals.restore()
            self.live.close()
            if ctx.oom is not None:
                ctx.oom.close()
        return self._report()

    def _models_answer(self) -> bool:
        """Every healthy generated model answers one validated request on every server."""
        ctx = self.ctx
        healthy = tuple(s for s in ctx.models if s.name not in FAULTY_MODELS)
        probes = [probe_model(target.endpoints.grpc, spec) for target in ctx.targets for spec in healthy]
        ctx.say(probe_table(probes))
        return all(p.ok for p in probes)

    def _resolve_loads(self) -> None:
        """The config's [[load]] entries against the (first) server's model metadata."""
        ctx, config = self.ctx, self.ctx.config
        base = config.source.parent if config.source else Path(".")
        ctx.user_loads = resolve_loads(config.load, ctx.targets[0].endpoints.grpc, base)
        weights = {**dict(config.scenarios.weights), **{load.scenario: load.weight for load in ctx.user_loads}}
        scenario_table(weights, ctx.models, config.scenarios, ctx.user_loads)
        for load in ctx.user_loads:
            ctx.say(f"  {load.scenario}: inputs "
                    f"{', '.join(f'{t.name} {t.datatype}{list(t.dims)}' for t in load.spec.inputs)}"
                    f", data {load.data}" + (f", {len(load.expect)} validation rows" if load.expect else ""))

    def _supervise(self, pool: WorkerPool, watch: WatchProcesses, recovery: ServerRecovery, deadline: float,
                   signals: StopSignals) -> None:
        """Once a second until the deadline: replace dead workers, bring lost servers back, keep
        the aggregator, kill silent workers, show progress; stop early on an OOM-killed load, a
        server or aggregator that cannot be brought back, a fatal verdict, or a signal."""
        ctx = self.ctx
        reader = RunStore.open(ctx.store_path)
        try:
            while ctx.clock() < deadline and not signals.asked:
                ctx.sleep(LIVE_EVERY_S)
                pool.replace_dead(deadline)
                if ctx.oom is not None and ctx.oom.stops_run:
                    self.incidents.add(ctx.oom.stop_text())
                    break
                if any(not recovery.recover(i, deadline, MONITOR_OUTLIVE_S) for i in recovery.lost()):
                    break
                if not watch.keep_aggregator():
                    break
                status = reader.status() or LiveStatus()
                pool.kill_silent(status.heartbeat_age_s)
                self.live.update(status, ctx.elapsed(), max(0.0, deadline - ctx.clock()))
                if status.fatal:
                    self.incidents.add(f"fatal verdict: {status.fatal[0]}; the run stops")
                    break
        finally:
            reader.close()
        if signals.asked:
            self.incidents.add(f"stop requested {signals.why()}; stopping gracefully")

    def _report(self) -> RunOutcome:
        ctx, say = self.ctx, self.ctx.say
        root = ctx.paths.root
        if not ctx.store_path.exists():
            say("verdict: FAIL (nothing was recorded)")
            return RunOutcome(1, ctx.paths, self.incidents.items)
        report = load_report(root)
        formats = ctx.config.report.formats
        written = write_reports(root, report, formats)
        summary = render_summary(report)
        if "terminal" in formats:
            say(summary.removesuffix("\n"))
        email = ctx.config.report.email
        if email.smtp_host:
            page = root / "report.html"
            try:
                say(send_report(email, summary, page.read_text() if page in written else render_page(root)))
            except MailError as exc:  # the run's verdict stands; the reason is said
                say(f"e-mail: {exc}")
        say(f"report: {root} (run.sqlite; python -m engine report {root} rebuilds it)")
        return RunOutcome(report.exit_code, ctx.paths, self.incidents.items)


def run_config(config: Config, *, say: Say | None = None, live: str = "auto",
               stop: threading.Event | None = None) -> RunOutcome:
    """Run `config` to its end and return the outcome. Every line the run says goes to `say`
    (to stdout when None: the CLI's terminal output). `live` is the progress display: "auto"
    (a line rewritten in place on a terminal, a line every 10 s otherwise), "line", "plain" or
    "off"; with `say`, "auto" and "line" mean "plain". Setting `stop` stops the load gracefully,
    as a first SIGINT does (the only way for a run outside the main thread). Set-up failures
    raise (ConfigError, ServerSetupError, LoadError, PlanError, BudgetError); a second SIGINT
    raises KeyboardInterrupt."""
    view = LiveView(live, sys.stdout) if say is None else LiveView(live, say=say)
    return Coordinator(config, view, stop).run()


def run(config: Config) -> int:
    """The CLI's run: the config's live mode, output on stdout, the process titled as the run's
    coordinator (`ps` tells every process of a run by its role), the exit status."""
    try:
        coordinator = Coordinator(config, LiveView(config.report.live, sys.stdout))
        set_process_title(coordinator.ctx.paths.run_id, "coordinator")
        return coordinator.run().exit_code
    except KeyboardInterrupt:
        print("stopped at once by a second interrupt; the run directory keeps what was written", file=sys.stderr)
        return 1


__all__ = ["Coordinator", "Incident", "RunOutcome", "run", "run_config"]
