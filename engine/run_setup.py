"""The first steps of every run: its id and directory, the model repository, the server."""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from model_repo_gen import ModelSpec, generate_repository
from shm import server_region_prefix

from .config import Config, config_to_dict
from .server import (
    AttachedServer,
    LaunchedServer,
    LaunchOptions,
    attach_server,
    endpoints_from_urls,
)


@dataclass(frozen=True)
class RunPaths:
    run_id: str
    root: Path  # <results_dir>/<run_id>
    repository: Path  # generated model repository
    server_dir: Path  # backend directory links and the server log
    config_json: Path  # the resolved config, as the run used it


def new_run_id() -> str:
    """Sortable by start time, unique across concurrent runs, short enough for shm names."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def create_run_dir(config: Config, run_id: str | None = None) -> RunPaths:
    run_id = run_id or new_run_id()
    root = Path(config.run.results_dir).resolve() / run_id
    paths = RunPaths(
        run_id=run_id, root=root, repository=root / "model_repository", server_dir=root / "server",
        config_json=root / "config.json",
    )
    paths.server_dir.mkdir(parents=True, exist_ok=True)
    payload = {"run_id": run_id, "pid": os.getpid(), "config": config_to_dict(config)}
    paths.config_json.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return paths


def prepare_repository(config: Config, paths: RunPaths) -> tuple[ModelSpec, ...]:
    """Generate the models the config asks for into the run's own repository."""
    return generate_repository(paths.repository, config.models)


def start_server(config: Config, paths: RunPaths, models: tuple[ModelSpec, ...]) -> LaunchedServer | AttachedServer:
    """Launch the configured server on the run's repository, or attach to the configured URL."""
    server = config.server
    if server.url:
        endpoints = endpoints_from_urls(server.url, server.grpc_url, server.metrics_url)
        wanted = [m.name for m in models] + [entry.model for entry in config.load]
        return attach_server(endpoints, wanted, timeout=server.startup_timeout)
    options = LaunchOptions(
        repository=paths.repository,
        work_dir=paths.server_dir,
        binary=Path(server.binary) if server.binary else None,
        host=server.host,
        http_port=server.http_port,
        grpc_port=server.grpc_port,
        metrics_port=server.metrics_port,
        startup_timeout=server.startup_timeout,
        stop_timeout=server.stop_timeout,
        extra_args=tuple(server.extra_args),
        extra_repositories=(Path(server.model_repository).resolve(),) if server.model_repository else (),
        shm_prefix=server_region_prefix(paths.run_id),
    )
    launched = LaunchedServer(options)
    launched.start()
    return launched
