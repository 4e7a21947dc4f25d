"""What `run` does until the load loop exists: bring the run up and prove every model answers.

Generates the repository, starts (or attaches to) the server, sends each model one validated
request (a short sequence for sequence models, a stream for decoupled ones), prints the table,
and stops everything it started.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

from model_repo_gen.options import FAULTY_MODELS

from .config import Config, format_duration
from .probe import ProbeResult, probe_model
from .run_setup import create_run_dir, prepare_repository, start_server


def _say(text: str) -> None:
    print(text, flush=True)


def _table(results: list[ProbeResult]) -> str:
    width = max(len(r.model) for r in results)
    rows = [f"  {'model':<{width}}  result  seconds  detail"]
    for r in results:
        verdict = "ok" if r.ok else ("FAULT" if r.model in FAULTY_MODELS else "FAIL")
        rows.append(f"  {r.model:<{width}}  {verdict:<6}  {r.seconds:7.2f}  {r.detail}")
    return "\n".join(rows)


def run_startup_check(config: Config) -> int:
    started = time.monotonic()
    paths = create_run_dir(config)
    _say(f"run {paths.run_id}: results in {paths.root}")
    _say(f"config: duration {format_duration(config.run.duration)}, seed {config.run.seed}, "
         f"{config.workers.count} workers over {config.workers.protocol}, shm {config.workers.shm}")
    specs = prepare_repository(config, paths)
    _say(f"generated {len(specs)} models in {paths.repository}")
    server = start_server(config, paths, specs)
    try:
        where = "attached to" if server.pid is None else f"started tritonserver pid {server.pid} at"
        _say(f"{where} http {server.endpoints.http}, grpc {server.endpoints.grpc}, metrics {server.endpoints.metrics}")
        # Probes run side by side: the slow zero model alone takes its whole execute delay.
        with ThreadPoolExecutor(max_workers=min(8, len(specs))) as pool:
            results = list(pool.map(lambda spec: probe_model(server.endpoints.grpc, spec), specs))
    finally:
        server.stop()
    _say(_table(results))
    failed = [r for r in results if not r.ok and r.model not in FAULTY_MODELS]
    verdict = "PASS" if not failed else f"FAIL ({len(failed)} of {len(results)} models did not answer correctly)"
    _say(f"verdict: {verdict}; every model was sent one validated request "
         f"(the load loop is not part of this version); {time.monotonic() - started:.1f} s")
    return 0 if not failed else 1
