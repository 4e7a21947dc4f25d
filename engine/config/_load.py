"""Read a config file into a validated Config: sections, environment, cross-field rules."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import secrets
import tomllib
import typing
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from shm.gpu import gpu_count as _gpu_count
from shm.gpu import gpu_unavailable_reason

from ._reader import ConfigError, Reader, to_plain
from ._sections import DEFAULT_WEIGHTS, LONG_DURATION_S, Config

SECTIONS = tuple(f.name for f in dataclasses.fields(Config) if f.name != "source")
SHIPPED_DIR = "configs"


def shipped_configs() -> list[str]:
    """Names of the configs installed with the package (smoke, long, very-long, perf)."""
    root = resources.files("engine").joinpath(SHIPPED_DIR)
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def resolve_config_path(name: str | Path) -> Path:
    """An existing file wins; else a bare name ("long" or "long.toml") is a shipped config."""
    path = Path(name)
    if path.is_file():
        return path
    stem = path.name[:-5] if path.name.endswith(".toml") else path.name
    if path.parent == Path(".") and stem in shipped_configs():
        return Path(str(resources.files("engine").joinpath(SHIPPED_DIR, f"{stem}.toml")))
    if path.exists():
        raise ConfigError(f"{name}: is not a file")
    raise ConfigError(f"{name}: no such file, and not a shipped config (shipped: {', '.join(shipped_configs())})")


def load_config(path: str | Path, *, environ: Mapping[str, str] = os.environ,
                gpu_count: Callable[[], int] = _gpu_count) -> Config:
    """Parse and validate `path`. Raises ConfigError with a one-line message."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return config_from_dict(data, source=path, environ=environ, gpu_count=gpu_count)


def config_from_dict(data: dict[str, Any], *, source: Path | None = None, environ: Mapping[str, str] = os.environ,
                     gpu_count: Callable[[], int] = _gpu_count) -> Config:
    reader = Reader(str(source) if source else "<config>")
    for name in data:
        if name not in SECTIONS:
            close = difflib.get_close_matches(name, SECTIONS, n=1)
            hint = f"; did you mean [{close[0]}]?" if close else f"; sections: {', '.join(SECTIONS)}"
            raise ConfigError(f"{reader.source}: unknown section [{name}]{hint}")
    email = data.get("report", {}).get("email", {}) if isinstance(data.get("report"), dict) else {}
    if isinstance(email, dict) and "password" in email:
        raise ConfigError(f"{reader.source}: [report.email] password: never put a password in a config; "
                          "set password_env to the name of an environment variable that holds it")
    defaults = Config()
    sections: dict[str, Any] = {}
    for name in SECTIONS:
        default = getattr(defaults, name)
        if name not in data:
            sections[name] = default
            continue
        table = data[name]
        if name == "scenarios" and isinstance(table, dict) and isinstance(table.get("weights"), dict):
            # A weights table overrides the defaults it names; the others keep the suite's weights.
            table = {**table, "weights": {**DEFAULT_WEIGHTS, **table["weights"]}}
        if name in ("load", "targets"):  # arrays of tables: [[load]], [[targets]]
            hint = typing.get_type_hints(Config)[name]
            sections[name] = reader.convert(hint, table, name, {})
            continue
        sections[name] = reader.read(type(default), table, name)
    config = Config(**sections, source=source)
    return _finish(config, data, reader, environ, gpu_count)


def _finish(config: Config, data: dict[str, Any], reader: Reader, environ: Mapping[str, str],
            gpu_count: Callable[[], int]) -> Config:
    run = config.run
    if "duration" not in data.get("run", {}) and environ.get("TRITON_PERF_LONG") == "1":
        run = dataclasses.replace(run, duration=LONG_DURATION_S)
    if run.seed < 0:
        run = dataclasses.replace(run, seed=secrets.randbelow(2**31))  # recorded in the resolved config
    server = config.server
    if server.binary and server.url:
        raise reader.fail("server.url", server.url, "give either [server] binary (launch it) or url (attach), not both")
    if server.url and (server.http_port or server.grpc_port or server.metrics_port):
        raise reader.fail("server.url", server.url, "ports are for a server the engine launches; "
                                                    "with url, set grpc_url / metrics_url instead")
    if server.model_repository and not Path(server.model_repository).is_dir():
        raise reader.fail("server.model_repository", server.model_repository, "no such directory")
    if server.model_repository and server.url:
        raise reader.fail("server.model_repository", server.model_repository,
                          "is for a server the engine launches; an attached server has its own")
    if server.binary and not Path(server.binary).is_file():
        raise reader.fail("server.binary", server.binary, "no such file")
    ports = [p for p in (server.http_port, server.grpc_port, server.metrics_port) if p]
    if len(ports) != len(set(ports)):
        raise reader.fail("server.http_port", server.http_port, "the HTTP, gRPC and metrics ports must differ")
    if config.workers.shm == "cuda" and gpu_count() == 0:
        raise reader.fail("workers.shm", "cuda", f"no usable GPU ({gpu_unavailable_reason() or 'none found'}); "
                                                 "use \"auto\" to fall back to system shared memory")
    if config.workers.cuda_device and (gpus := gpu_count()) and config.workers.cuda_device >= gpus:
        # Device 0 exists wherever a GPU does; without one, "cuda" is refused above and "auto" falls back.
        raise reader.fail("workers.cuda_device", config.workers.cuda_device,
                          f"this host has {gpus} CUDA device(s): 0 to {gpus - 1} "
                          "(as CUDA_VISIBLE_DEVICES numbers them)")
    if not any(config.scenarios.weights.values()) and not any(entry.weight for entry in config.load):
        raise reader.fail("scenarios.weights", config.scenarios.weights,
                          "at least one weight (of a scenario or a [[load]] entry) must be above zero")
    sc = config.scenarios
    if sc.steady_load_queue_low >= sc.steady_load_queue_high:
        raise reader.fail("scenarios.steady_load_queue_low", sc.steady_load_queue_low,
                          f"must be below steady_load_queue_high ({sc.steady_load_queue_high:g} s)")
    _check_targets(config, reader)
    email = config.report.email
    if email.smtp_host and (not email.sender or not email.recipients):
        raise reader.fail("report.email.smtp_host", email.smtp_host, "e-mail needs sender and recipients too")
    return dataclasses.replace(config, run=run)


def _check_targets(config: Config, reader: Reader) -> None:
    targets = config.targets
    if targets and (config.server.url or config.server.binary):
        raise reader.fail("targets[0].url", targets[0].url,
                          "[[targets]] attaches to a fleet of running servers; leave [server] url and binary empty")
    names = [t.name or t.url for t in targets]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise reader.fail(f"targets[{i}].name", name, "every target needs its own name (or URL)")
    if config.cluster.backend == "ray" and importlib.util.find_spec("ray") is None:  # found, not imported
        raise reader.fail("cluster.backend", "ray", "Ray is not installed: pip install 'triton-endurance[ray]'")
    if len(targets) > config.workers.count:
        raise reader.fail("workers.count", config.workers.count,
                          f"must be at least the number of [[targets]] ({len(targets)}): each server gets a worker")


def config_to_dict(config: Config) -> dict[str, Any]:
    """JSON-ready form of the resolved config (durations in seconds)."""
    plain = to_plain(config)
    plain["source"] = str(config.source) if config.source else None
    return plain
