"""Endurance, stress and perf-regression engine for NVIDIA Triton Inference Server.

Library use (docs/library.md): run a config and read its verdicts, start (or attach to) a server,
drive a server with load of your own through the workers' code (`generate_load`).

    import engine

    result = engine.run(engine.make_config("smoke", run={"duration": "30s"}))
    print(result.verdict, [v.text for v in result.verdicts])
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from workers.plans import PlanError

from .config import Config, ConfigError, load_config, resolve_config_path
from .library import (
    ConfigLike,
    Incident,
    Progress,
    RunFiles,
    RunResult,
    StressFailed,
    as_config,
    make_config,
    open_run,
    run,
)
from .server import (
    AttachedServer,
    LaunchedServer,
    LaunchOptions,
    ServerEndpoints,
    ServerSetupError,
    attach_server,
    endpoints_from_urls,
    launch_server,
)

# The library's loggers ("engine", "engine.run" for a run's lines) say nothing until the
# application configures logging: a library does not pick its caller's handlers.
logging.getLogger(__name__).addHandler(logging.NullHandler())

# Names whose modules take long to import (the report's numpy/scipy machinery, the gRPC client):
# loaded on first use, so `import engine` stays quick in every worker process that unpickles a
# config section.
_LAZY = {
    "BudgetError": "engine.memory_budget",
    "CudaUnavailable": "shm",
    "LatencyRow": "engine.report.build",
    "LoadError": "workers.user_load",
    "LoadEvent": "engine.library._load_result",
    "LoadPlan": "engine.library._load_plan",
    "LoadResult": "engine.library._load_result",
    "PlanTotals": "engine.library._load_result",
    "Records": "engine.library._load_result",
    "RunReport": "engine.report.build",
    "ScenarioRow": "engine.report.build",
    "VerdictEntry": "engine.report.build",
    "WindowStats": "engine.window_stats",
    "WindowTable": "engine.library._load_result",
    "generate_load": "engine.library._loadgen",
}

if TYPE_CHECKING:
    from shm import CudaUnavailable
    from workers.user_load import LoadError

    from .library._load_plan import LoadPlan
    from .library._load_result import LoadEvent, LoadResult, PlanTotals, Records, WindowTable
    from .library._loadgen import generate_load
    from .memory_budget import BudgetError
    from .report.build import LatencyRow, RunReport, ScenarioRow, VerdictEntry
    from .window_stats import WindowStats


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AttachedServer",
    "BudgetError",
    "Config",
    "ConfigError",
    "CudaUnavailable",
    "ConfigLike",
    "Incident",
    "LatencyRow",
    "LaunchOptions",
    "LaunchedServer",
    "LoadError",
    "LoadEvent",
    "LoadPlan",
    "LoadResult",
    "PlanError",
    "PlanTotals",
    "Progress",
    "Records",
    "RunFiles",
    "RunReport",
    "RunResult",
    "ScenarioRow",
    "ServerEndpoints",
    "ServerSetupError",
    "StressFailed",
    "VerdictEntry",
    "WindowStats",
    "WindowTable",
    "as_config",
    "attach_server",
    "endpoints_from_urls",
    "generate_load",
    "launch_server",
    "load_config",
    "make_config",
    "open_run",
    "resolve_config_path",
    "run",
]
