"""The baseline gate: a run's points against a stored perf document, metric by metric.

A baseline is a perf.json document (`--save-baseline` writes one). Points are paired by key. A
metric regresses when it moved the wrong way by more than its tolerance: throughput is allowed to
fall by `throughput` (e.g. 0.05 = 5 %), each latency to grow by its own. The tolerances come from
[perf] (throughput and p99); a baseline may carry a "tolerances" object that sets these and gates
more latencies (avg, p50, p90, p95). Errors regress when the baseline point had none. Points that
were unstable (on either side) are compared and flagged; with `ignore_unstable` their regressions
do not fail the gate. Points only on one side are listed, never silently dropped.

Everything here works on the JSON form of points (output.point_to_dict), so two stored documents
compare exactly as a live run does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .output import SCHEMA, SCHEMA_VERSION, write_json

LATENCIES = ("avg", "p50", "p90", "p95", "p99")
TOLERANCE_KEYS = ("throughput", *LATENCIES)
MEASURED = ("stable", "unstable")


class BaselineError(Exception):
    """A baseline file that cannot be used: missing, not JSON, or not a perf document."""


@dataclass(frozen=True)
class Baseline:
    path: Path
    document: dict[str, Any]
    points: dict[str, dict[str, Any]]  # key -> the point's JSON form

    @property
    def tolerances(self) -> dict[str, float]:
        return dict(self.document.get("tolerances") or {})


def load_baseline(path: Path) -> Baseline:
    """Read and check a baseline; BaselineError says what is wrong in one line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BaselineError(f"{path}: no such baseline file (write one with --save-baseline)") from None
    except OSError as exc:
        raise BaselineError(f"{path}: cannot read the baseline: {exc.strerror or exc}") from None
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BaselineError(f"{path}: the baseline is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise BaselineError(f"{path}: not a perf baseline (expected \"schema\": \"{SCHEMA}\", "
                            "as perf.json and --save-baseline write)")
    if document.get("version") != SCHEMA_VERSION:
        raise BaselineError(f"{path}: baseline format version {document.get('version')!r}; "
                            f"this engine reads version {SCHEMA_VERSION}")
    points = document.get("points")
    if not isinstance(points, list) or not all(isinstance(p, dict) and isinstance(p.get("key"), str) for p in points):
        raise BaselineError(f"{path}: \"points\" must be a list of points, each with a \"key\"")
    tolerances = document.get("tolerances")
    if tolerances is not None:
        if not isinstance(tolerances, dict):
            raise BaselineError(f"{path}: \"tolerances\" must be an object, e.g. {{\"p50\": 0.2}}")
        for name, value in tolerances.items():
            if name not in TOLERANCE_KEYS:
                raise BaselineError(f"{path}: tolerances.{name}: unknown metric; known: {', '.join(TOLERANCE_KEYS)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise BaselineError(f"{path}: tolerances.{name} = {value!r}: must be a number, 0 or more")
    for point in points:
        if point.get("status") in MEASURED:
            _check_figures(path, point)
    return Baseline(path, document, {p["key"]: p for p in points})


def _check_figures(path: Path, point: dict[str, Any]) -> None:
    latency = point.get("latency_us")
    numbers = [point.get("throughput_infer_per_s")] + [latency.get(m) if isinstance(latency, dict) else None
                                                       for m in LATENCIES]
    if any(isinstance(n, bool) or not isinstance(n, (int, float)) for n in numbers):
        raise BaselineError(f"{path}: point {point['key']!r} is measured but lacks throughput_infer_per_s or "
                            f"latency_us ({', '.join(LATENCIES)})")


def save_baseline(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, document)


@dataclass(frozen=True)
class Comparison:
    key: str
    metric: str  # throughput, avg, p50, p90, p95, p99, errors, status
    baseline: float
    run: float
    change: float  # relative (run / baseline - 1); for errors and status: the run's count, or 0
    allowed: float  # the tolerance that applied (signed: -0.05 for throughput, +0.10 for p99)
    regressed: bool
    unstable: bool = False  # the point was unstable in the run or in the baseline
    note: str = ""


@dataclass(frozen=True)
class GateResult:
    comparisons: tuple[Comparison, ...]
    missing: tuple[str, ...]  # in the baseline, not in this run
    new: tuple[str, ...]  # in this run, not in the baseline
    not_compared: tuple[tuple[str, str], ...]  # (key, why)
    notes: tuple[str, ...]  # configuration differences worth knowing when reading the numbers
    tolerances: dict[str, float] = field(default_factory=dict)
    ignore_unstable: bool = False

    @property
    def regressions(self) -> tuple[Comparison, ...]:
        return tuple(c for c in self.comparisons if c.regressed and not (c.unstable and self.ignore_unstable))

    @property
    def passed(self) -> bool:
        return not self.regressions


def resolve_tolerances(throughput: float, p99: float, baseline: Baseline) -> dict[str, float]:
    """[perf]'s two tolerances, then whatever the baseline's own "tolerances" object sets."""
    return {"throughput": throughput, "p99": p99, **baseline.tolerances}


def _relative(run: float, base: float) -> float:
    return run / base - 1.0 if base > 0 else 0.0


def compare_point(run: Mapping[str, Any], base: Mapping[str, Any], tolerances: Mapping[str, float]) -> list[Comparison]:
    """The gated metrics of one point (both sides measured)."""
    key = str(run["key"])
    unstable = run.get("status") == "unstable" or base.get("status") == "unstable"
    out: list[Comparison] = []
    if "throughput" in tolerances:
        b, r = float(base["throughput_infer_per_s"]), float(run["throughput_infer_per_s"])
        change, allowed = _relative(r, b), -float(tolerances["throughput"])
        out.append(Comparison(key, "throughput", b, r, change, allowed, b > 0 and change < allowed - 1e-12, unstable))
    for metric in LATENCIES:
        if metric not in tolerances:
            continue
        b, r = float(base["latency_us"][metric]), float(run["latency_us"][metric])
        change, allowed = _relative(r, b), float(tolerances[metric])
        out.append(Comparison(key, metric, b, r, change, allowed, b > 0 and change > allowed + 1e-12, unstable))
    run_errors = int(run.get("requests", {}).get("errors", 0))
    base_errors = int(base.get("requests", {}).get("errors", 0))
    if run_errors or base_errors:
        out.append(Comparison(key, "errors", base_errors, run_errors, float(run_errors), 0.0,
                              run_errors > 0 and base_errors == 0, unstable))
    return out


def compare(run_points: Sequence[Mapping[str, Any]], baseline: Baseline, tolerances: Mapping[str, float],
            run_models: Mapping[str, Any] | None = None, ignore_unstable: bool = False) -> GateResult:
    comparisons: list[Comparison] = []
    not_compared: list[tuple[str, str]] = []
    run_keys = {str(p["key"]) for p in run_points}
    for point in run_points:
        key = str(point["key"])
        base = baseline.points.get(key)
        if base is None:
            continue
        run_status, base_status = point.get("status"), base.get("status")
        if base_status not in MEASURED:
            not_compared.append((key, f"{base_status} in the baseline"))
        elif run_status == "failed":  # it worked before and does not now: that is a regression
            comparisons.append(Comparison(key, "status", 0.0, 0.0, 0.0, 0.0, True,
                                          note=f"failed: {point.get('reason', '')}"))
        elif run_status not in MEASURED:
            not_compared.append((key, f"{run_status} in this run: {point.get('reason', '')}"))
        else:
            comparisons.extend(compare_point(point, base, tolerances))
    missing = tuple(k for k in baseline.points if k not in run_keys)
    new = tuple(str(p["key"]) for p in run_points if str(p["key"]) not in baseline.points)
    notes = _config_notes(baseline.document.get("models") or {}, run_models or {})
    return GateResult(tuple(comparisons), missing, new, tuple(not_compared), tuple(notes), dict(tolerances),
                      ignore_unstable)


def _config_notes(base_models: Mapping[str, Any], run_models: Mapping[str, Any]) -> list[str]:
    """Model settings that differ from the baseline's (they often explain a change)."""
    notes = []
    for name, now in run_models.items():
        before = base_models.get(name)
        if not isinstance(before, dict) or not isinstance(now, dict):
            continue
        for knob, value in now.items():
            if knob in before and before[knob] != value:
                notes.append(f"{name}: {knob} is {value} in this run, {before[knob]} in the baseline")
    return notes


def _figure(metric: str, value: float) -> str:
    if metric == "throughput":
        return f"{value:,.1f}/s"
    if metric in ("errors", "status"):
        return f"{value:.0f}"
    return f"{value:,.0f} us"


def _signed(value: float) -> str:
    return f"{value * 100:+.1f} %"


def render_gate(result: GateResult, baseline: Baseline) -> str:
    """The gate's table: every comparison (regressions marked), then what was not compared."""
    tol = ", ".join(f"{m} {'-' if m == 'throughput' else '+'}{v * 100:g} %" for m, v in result.tolerances.items())
    run_id = baseline.document.get("run_id", "?")
    title = (f"baseline gate against {baseline.path} (run {run_id}); allowed: {tol}; "
             "errors only where the baseline had none")
    lines = [title]
    header = ("point", "metric", "baseline", "this run", "change", "allowed", "verdict")
    rows = []
    for c in result.comparisons:
        if c.metric == "status":
            rows.append((c.key, "status", "measured", "failed", "", "", "REGRESSED: " + c.note))
            continue
        if c.metric == "errors":
            change, allowed = "", "0 new"
        else:
            change, allowed = _signed(c.change), _signed(c.allowed)
        verdict = "REGRESSED" if c.regressed else "ok"
        if c.unstable:
            verdict += " (unstable" + (", not gated)" if c.regressed and result.ignore_unstable else ")")
        rows.append((c.key, c.metric, _figure(c.metric, c.baseline), _figure(c.metric, c.run), change, allowed,
                     verdict))
    if rows:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        right = {2, 3, 4, 5}

        def fmt(cells: Sequence[str]) -> str:
            return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        lines += [fmt(r).rstrip() for r in (header, tuple("-" * w for w in widths), *rows)]
    else:
        lines.append("no point of this run is in the baseline: nothing was compared")
    lines += [f"  missing from this run (in the baseline): {k}" for k in result.missing]
    lines += [f"  new in this run (not in the baseline): {k}" for k in result.new]
    lines += [f"  not compared: {k}: {why}" for k, why in result.not_compared]
    lines += [f"  note: {n}" for n in result.notes]
    if result.passed:
        lines.append(f"gate: PASS ({len(result.comparisons)} comparisons within tolerance)")
    else:
        lines.append(f"gate: FAIL: {len(result.regressions)} regression(s):")
        lines += [f"  {c.key}: {c.metric} {_summary(c)}" for c in result.regressions]
    return "\n".join(lines) + "\n"


def _summary(c: Comparison) -> str:
    if c.metric == "status":
        return c.note
    if c.metric == "errors":
        return f"{c.run:.0f} errors (baseline {c.baseline:.0f})"
    return f"{_signed(c.change)} (allowed {_signed(c.allowed)})"
