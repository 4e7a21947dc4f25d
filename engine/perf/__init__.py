"""Perf-regression runs: a sweep of models x protocols x shared memory x batch x load, measured
in windows until stable, written as perf_analyzer's CSV and a JSON document, and gated against a
stored baseline.

    from engine.config import load_config, resolve_config_path
    from engine.perf import PerfOptions, run_perf

    status = run_perf(load_config(resolve_config_path("perf.toml")), PerfOptions(baseline=Path("base.json")))

PERF.md (top level) describes the sweep, the file formats and the gate.
"""

from .baseline import (
    Baseline,
    BaselineError,
    GateResult,
    compare,
    load_baseline,
    render_gate,
)
from .plan import PlannedPoint, PointSpec, plan_points
from .results import PointResult
from .sweep import PerfOptions, run_perf

__all__ = [
    "Baseline",
    "BaselineError",
    "GateResult",
    "PerfOptions",
    "PlannedPoint",
    "PointResult",
    "PointSpec",
    "compare",
    "load_baseline",
    "plan_points",
    "render_gate",
    "run_perf",
]
