"""What a perf sweep measures: the points (model x protocol x shm x batch x load level), each
with a stable key, and the points that cannot run here (with the reason, never an error)."""

from __future__ import annotations

from dataclasses import dataclass

from model_repo_gen import ModelSpec
from model_repo_gen.spec import FAULT_KINDS

from ..config import ConfigError, PerfSection

CLOSED = "concurrency"  # closed loop: `level` requests in flight, each sent when the last one answered
OPEN = "request_rate"  # open loop: `level` requests per second on a schedule, whatever the answers do
# Kinds whose answer is a pure function of the input (identity-like, or zeros), so a perf lane can
# check its first answer and then send the same request forever. The faulty kinds answer as identity
# until their fault shows (and then it shows as errors or latency, which is the point of them).
MEASURABLE_KINDS = ("identity", "zero", *FAULT_KINDS)


@dataclass(frozen=True)
class PointSpec:
    """One measurement of the sweep."""

    model: str
    protocol: str  # grpc, grpc_stream, http
    shm: str  # none, system, cuda
    batch_size: int
    input_elements: int  # per batch item
    load: str  # CLOSED or OPEN
    level: float  # concurrency (a whole number) or requests per second

    @property
    def key(self) -> str:
        """The point's identity across runs: the baseline gate pairs points by this."""
        return (f"{self.model} {self.protocol} shm={self.shm} batch={self.batch_size} "
                f"elements={self.input_elements} {self.load_label}")

    @property
    def load_label(self) -> str:
        return f"concurrency={int(self.level)}" if self.load == CLOSED else f"rate={self.level:g}/s"


@dataclass(frozen=True)
class PlannedPoint:
    spec: PointSpec
    skip_reason: str = ""  # non-empty: reported as skipped, not measured


def check_perf_section(perf: PerfSection, specs: dict[str, ModelSpec]) -> None:
    """What the section's own validation cannot know: model kinds, and that there is some load."""
    if not perf.concurrency and not perf.request_rates:
        raise ConfigError("[perf] concurrency and request_rates are both empty: give at least one level")
    for name in perf.models:
        spec = specs[name]
        if spec.kind not in MEASURABLE_KINDS or spec.is_sequence or spec.decoupled or len(spec.inputs) != 1:
            raise ConfigError(f"[perf] models: {name!r} is a {spec.kind} model; the perf sweep measures "
                              "stateless one-input models (identity, zero and the identity-like faulty ones), "
                              "e.g. identity_fp32, identity_int32, identity_bytes")


def plan_points(perf: PerfSection, specs: dict[str, ModelSpec], gpus: int, gpu_reason: str) -> list[PlannedPoint]:
    """Every point in sweep order (model, protocol, shm, batch, then load levels)."""
    loads = [(CLOSED, float(c)) for c in perf.concurrency] + [(OPEN, float(r)) for r in perf.request_rates]
    planned: list[PlannedPoint] = []
    for model in perf.models:
        spec = specs[model]
        for protocol in perf.protocols:
            for shm in perf.shm_modes:
                for batch in perf.batch_sizes:
                    for load, level in loads:
                        point = PointSpec(model, protocol, shm, batch, perf.input_elements, load, level)
                        planned.append(PlannedPoint(point, _skip_reason(point, spec, gpus, gpu_reason)))
    return planned


def _skip_reason(point: PointSpec, spec: ModelSpec, gpus: int, gpu_reason: str) -> str:
    if point.shm == "cuda" and gpus == 0:
        return f"no GPU for CUDA shared memory ({gpu_reason or 'no CUDA device'})"
    if spec.max_batch_size == 0 and point.batch_size != 1:
        return f"{spec.name} does not batch (max_batch_size 0): only batch size 1"
    if spec.max_batch_size and point.batch_size > spec.max_batch_size:
        return (f"batch size {point.batch_size} is above {spec.name}'s max_batch_size {spec.max_batch_size} "
                "([models] max_batch_size)")
    return ""
