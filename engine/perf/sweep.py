"""`python -m engine perf`: the sweep from config to exit status.

Set-up (baseline read first, so a bad one fails in a second, not after the sweep), the model
repository of the [perf] models, the server (launched or attached), every point in turn on one
event loop, the results written after each point, the table, the gate. Whatever happens (a failed
point, Ctrl-C, SIGTERM, an exception), the server is stopped and the run's shared-memory regions
are unregistered and unlinked before this returns.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import os
import platform
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import tritonclient.grpc as grpcclient

from model_repo_gen import ModelSpec, build_specs
from shm import cleanup, gpu_count, gpu_unavailable_reason
from workers import event_loop

from ..config import Config, ConfigError, config_to_dict, format_duration
from ..run_setup import create_run_dir, prepare_repository, start_server
from ..server import ServerEndpoints
from .baseline import (
    Baseline,
    compare,
    load_baseline,
    render_gate,
    resolve_tolerances,
    save_baseline,
)
from .measure import MeasureSettings, PointContext, measure_point
from .output import (
    build_document,
    point_line,
    point_to_dict,
    render_table,
    status_counts,
    write_outputs,
)
from .plan import PlannedPoint, check_perf_section, plan_points
from .results import FAILED, NOT_RUN, SKIPPED, PointResult
from .server_stats import StatsReader

EXIT_PASS, EXIT_FAIL, EXIT_SETUP = 0, 1, 2


@dataclass(frozen=True)
class PerfOptions:
    baseline: Path | None = None  # compare with this stored document (exit 1 on a regression)
    save_baseline: Path | None = None  # write this run's document here when the sweep completes
    ignore_unstable: bool = False  # regressions of unstable points are shown but do not fail


def _say(text: str) -> None:
    print(text, flush=True)


def _model_facts(spec: ModelSpec) -> dict[str, Any]:
    """What the baseline gate compares between runs to explain a change (a new delay, say)."""
    return {"kind": spec.kind, "backend": spec.backend, "datatype": spec.inputs[0].datatype,
            "max_batch_size": spec.max_batch_size, "dynamic_batching": spec.dynamic_batching,
            "instance_count": spec.instance_count, "instance_kind": spec.instance_kind,
            "execute_delay_ms": spec.execute_delay_ms}


def _server_version(endpoints: ServerEndpoints) -> str:
    try:
        with urllib.request.urlopen(f"http://{endpoints.http}/v2", timeout=5) as answer:
            return str(orjson.loads(answer.read()).get("version", ""))
    except (OSError, ValueError):  # only informative: the run goes on without it
        return ""


def _clean_shm(run_id: str, endpoints: ServerEndpoints) -> None:
    """Unregister and unlink any region of this run still there (a point killed mid-way)."""
    client = grpcclient.InferenceServerClient(endpoints.grpc)
    try:
        report = cleanup(run_id, client)  # a server that is gone: its part is skipped, /dev/shm is still cleaned
    finally:
        client.close()
    if report.unregistered or report.unlinked:
        _say(f"cleanup: unregistered {len(report.unregistered)} and unlinked {len(report.unlinked)} "
             "leftover shared-memory regions")


async def _sweep(planned: list[PlannedPoint], specs: dict[str, ModelSpec], endpoints: ServerEndpoints,
                 settings: MeasureSettings, run_id: str, deadline: float, server_alive: Callable[[], bool],
                 on_point: Callable[[PointResult], None]) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is not None:  # SIGTERM (CI cancelling a job) stops like Ctrl-C: points clean up on the way out
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    reader = StatsReader(endpoints.http)
    minimum = settings.warmup_s + settings.stability_windows * settings.window_s
    try:
        for index, point in enumerate(planned):
            spec = point.spec
            if point.skip_reason:
                result = PointResult(spec, SKIPPED, point.skip_reason)
            elif time.monotonic() + minimum > deadline:
                result = PointResult(spec, NOT_RUN, "the sweep's time bound ([run] duration) was reached")
            elif not server_alive():
                result = PointResult(spec, NOT_RUN, "the server is no longer running")
            else:
                context = PointContext(endpoints, specs[spec.model], run_id, index, deadline)
                try:
                    result = await measure_point(spec, context, settings, reader)
                except Exception as exc:  # noqa: BLE001 - one broken point is reported; the sweep goes on
                    result = PointResult(spec, FAILED, f"{type(exc).__name__}: {exc}")
            on_point(result)
    finally:
        reader.close()
        loop.remove_signal_handler(signal.SIGTERM)


def run_perf(config: Config, options: PerfOptions) -> int:
    """The whole perf command; returns the exit status (ConfigError, ServerSetupError and
    BaselineError propagate for the CLI to report as set-up failures, exit 2)."""
    baseline: Baseline | None = load_baseline(options.baseline) if options.baseline else None
    perf = config.perf
    repo = dataclasses.replace(config.models, models=tuple(dict.fromkeys(perf.models)))
    try:
        specs = {s.name: s for s in build_specs(repo)}
    except ValueError as exc:
        raise ConfigError(f"[perf] models: {exc}") from None
    check_perf_section(perf, specs)
    needs_gpu = "cuda" in perf.shm_modes
    planned = plan_points(perf, specs, gpu_count() if needs_gpu else 0,
                          gpu_unavailable_reason() if needs_gpu else "")
    config = dataclasses.replace(config, models=repo)
    settings = MeasureSettings.from_perf(perf, config.run.seed, config.workers.cuda_device)
    paths = create_run_dir(config)
    wall_start = datetime.datetime.now().astimezone()
    started = time.monotonic()
    deadline = started + config.run.duration
    _say(f"perf run {paths.run_id}: results in {paths.root}")
    _say(f"sweep: {len(planned)} points ({', '.join(perf.models)} x {', '.join(perf.protocols)} x shm "
         f"{', '.join(perf.shm_modes)} x batch {', '.join(map(str, perf.batch_sizes))} x "
         f"{len(perf.concurrency)} concurrency + {len(perf.request_rates)} rate levels), {perf.input_elements} "
         f"elements; warm-up {format_duration(perf.warmup)}, windows of {format_duration(perf.window)} until "
         f"{perf.stability_windows} agree within {perf.stability_tolerance:.0%} (at most {perf.max_windows}); "
         f"time bound {format_duration(config.run.duration)}")
    model_specs = prepare_repository(config, paths)
    server = start_server(config, paths, model_specs)
    results: list[PointResult] = []
    interrupted = ""
    facts = {name: _model_facts(spec) for name, spec in specs.items()}

    def document(complete: bool) -> dict[str, Any]:
        finished = datetime.datetime.now().astimezone()
        return build_document({
            "run_id": paths.run_id, "complete": complete,
            "started": wall_start.isoformat(timespec="seconds"), "finished": finished.isoformat(timespec="seconds"),
            "wall_s": round(time.monotonic() - started, 3),
            "host": {"hostname": socket.gethostname(), "cpus": os.cpu_count(), "platform": platform.platform(),
                     "python": platform.python_version()},
            "server": {"version": version, "http": server.endpoints.http, "grpc": server.endpoints.grpc,
                       "attached": server.pid is None},
            "settings": {**config_to_dict(config)["perf"], "seed": config.run.seed},
            "models": facts,
        }, results)

    def on_point(result: PointResult) -> None:
        results.append(result)
        _say(point_line(len(results), len(planned), result))
        write_outputs(paths.root, document(False), results)

    version = ""
    try:
        version = _server_version(server.endpoints)
        _say(f"server: triton {version or '?'}, http {server.endpoints.http}, grpc {server.endpoints.grpc}"
             + (f", pid {server.pid}" if server.pid else " (attached)"))
        try:
            event_loop.run(_sweep(planned, specs, server.endpoints, settings, paths.run_id, deadline,
                                  server.is_running, on_point), config.workers.event_loop)
        except (KeyboardInterrupt, asyncio.CancelledError):
            interrupted = "interrupted (Ctrl-C or SIGTERM)"
    finally:
        _clean_shm(paths.run_id, server.endpoints)
        server.stop()
    for point in planned[len(results):]:
        results.append(PointResult(point.spec, NOT_RUN, interrupted or "not reached"))
    final = document(complete=not interrupted)
    written = write_outputs(paths.root, final, results)

    sys.stdout.write("\n" + render_table(results))
    counts = ", ".join(f"{n} {status}" for status, n in status_counts(results).items())
    _say(f"perf: {len(results)} points ({counts}) in {format_duration(round(time.monotonic() - started, 1))}; "
         f"wrote {', '.join(p.name for p in written)}")
    if interrupted:
        _say(f"perf: {interrupted}; the results so far are in {paths.root}")
        return EXIT_FAIL
    exit_code = EXIT_PASS
    failed = [r for r in results if r.status == FAILED]
    if failed:
        _say(f"perf: FAIL: {len(failed)} point(s) could not be measured: "
             + "; ".join(f"{r.spec.key}: {r.reason}" for r in failed))
        exit_code = EXIT_FAIL
    if baseline is not None:
        tolerances = resolve_tolerances(perf.baseline_throughput_tolerance, perf.baseline_p99_tolerance, baseline)
        gate = compare([point_to_dict(r) for r in results], baseline, tolerances, facts, options.ignore_unstable)
        sys.stdout.write("\n" + render_gate(gate, baseline))
        if not gate.passed:
            exit_code = EXIT_FAIL
    if options.save_baseline is not None:
        try:
            save_baseline(options.save_baseline, final)
        except OSError as exc:
            _say(f"perf: cannot write the baseline {options.save_baseline}: {exc.strerror or exc}")
            return EXIT_SETUP
        _say(f"baseline written: {options.save_baseline}")
    return exit_code
