"""Scenarios as data: each scenario is a small function that draws a plan of steps.

A step says what to send (model, values, sequence flags), what must come back (the exact
expected output, or a text the error must contain) and how long it may take. One executor runs
every plan; nothing here touches the network, so plans are tested and replayed on their own.
Every random choice comes from the generator passed in, which the worker seeds from the run seed;
the contents of the input pools, which a worker's lanes share, from one of the worker's own
(PlanContext.pooled).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from model_repo_gen.spec import FAULT_KINDS, ModelSpec

# The server's own words for the expected errors of the negative scenarios.
NO_START_ERROR = "must specify the START flag"
DEADLINE_ERROR = "Deadline Exceeded"
TIMEOUT_INPUT = "timeout"  # the host input key of the timeout scenario's ones

T = TypeVar("T")
SEQUENCE_VALUE_LIMIT = 1 << 20  # sequence inputs are drawn from [0, 2^20), as in the reference suite


# Step, Plan (and TensorRef) are made for every request: plain slotted dataclasses, read-only by
# convention, because a frozen dataclass's __init__ sets each field through object.__setattr__
# (several times the cost of a plain one, on every request).
@dataclass(slots=True)
class Step:
    model: str
    values: np.ndarray  # the first input's data, shaped as sent
    sequence_id: int | str = 0
    start: bool = False
    end: bool = False
    expect: np.ndarray | None = None  # exact expected output; None: no output check
    expect_error: str = ""  # the request must fail with an error containing this
    timeout_s: float | None = None  # client deadline for this request
    stream_count: int = 0  # decoupled models: number of responses expected (OUT = IN + i)
    # Models with more than one input or checked output (users' models): (name, data) pairs
    # beyond the first input, and (name, expected) pairs beyond the first output.
    extra_inputs: tuple[tuple[str, np.ndarray], ...] = ()
    extra_expect: tuple[tuple[str, np.ndarray], ...] = ()
    constant_input: bool = False  # the same array every time: shared memory writes it once, reuses it
    protocol: str = ""  # "" = the worker's protocol
    shm: str = ""  # "" = the worker's shared memory; "none" = inline; else that pool's mode
    # A constant input that one host-wide region holds for every worker (its key in the worker's
    # host inputs): the timeout scenario's 1 GiB of ones, written once per host instead of per worker.
    host_input: str = ""
    # Users' models: room in shared memory for each output of the answer (0: answers inline, unless
    # the model's own outputs say their size).
    output_bytes: int = 0
    # Made once and sent again and again (a pooled request of identity, large_tensor or a [[load]]
    # entry): the executor works out what it needs from it (outputs, checks, tensors, the serialized
    # request) once, not per request.
    prebuilt: bool = False


@dataclass(slots=True)
class Plan:
    scenario: str
    steps: tuple[Step, ...]
    deadline_s: float  # the whole plan must finish within this (the reference: 25 s per sequence)
    # Sequences left open on purpose (no END): the server must time them out.
    left_open: tuple[int | str, ...] = field(default=())

    def with_scenario(self, scenario: str) -> Plan:
        """The same steps, counted under another scenario (one that reuses this plan)."""
        return dataclasses.replace(self, scenario=scenario)


class ScenarioSettings(Protocol):
    """The `[scenarios]` knobs a worker reads (the engine config's frozen section satisfies this:
    read-only members)."""

    @property
    def weights(self) -> dict[str, int]: ...  # scenario -> its share of the plans

    @property
    def sequence_length_mean(self) -> float: ...

    @property
    def sequence_length_stddev(self) -> float: ...

    @property
    def sequence_deadline(self) -> float: ...

    @property
    def timeout_client_deadline(self) -> float: ...

    @property
    def timeout_input_bytes(self) -> int: ...

    @property
    def large_tensor_bytes(self) -> int: ...

    @property
    def streaming_responses(self) -> int: ...

    @property
    def input_pool(self) -> int: ...  # distinct inputs per pool (user loads, identity, large_tensor), per worker

    @property
    def input_pool_bytes(self) -> int: ...  # their bytes per pool, at most (one input at least)


class IdSource:
    """Correlation ids from this worker's own block, so no two workers ever share a sequence id.

    A PlanContext is made per lane (and per steady_load period), but every one of a worker holds
    the worker's one IdSource: so it also keeps what the lanes share, the input pools
    (PlanContext.pooled), made once per worker. `seed` (the run seed, where the worker gives it)
    and the worker id seed their contents."""

    def __init__(self, base: int, block: int, worker_id: int, seed: int = 0) -> None:
        self.base, self.block, self.worker_id, self.seed = base, block, worker_id, seed
        self._next = 0
        self.pools: dict[tuple, Any] = {}

    def take(self, spec: ModelSpec) -> int | str:
        n = self._next
        self._next = (self._next + 1) % self.block
        if spec.sequence is not None and spec.sequence.correlation_id_type == "STRING":
            return f"w{self.worker_id}-{self.base + n}"
        return self.base + n


_NUMPY = {"FP32": np.float32, "INT32": np.int32}


def pool_size(wanted: int, cap_bytes: int, input_bytes: int) -> int:
    """How many distinct inputs a pool holds: `wanted` ([scenarios] input_pool), fewer where they
    would pass `cap_bytes` (input_pool_bytes) at `input_bytes` each, one at least."""
    return max(1, min(wanted, cap_bytes // max(1, input_bytes)))


def below(rng: np.random.Generator, n: int) -> int:
    """A uniform integer in [0, n) from one double: a fifth of what rng.integers costs per call
    (it is drawn for every request); the bias of 53-bit floats over n < 2**20 is below 1e-10.
    Nothing is drawn where there is nothing to choose (n = 1: a pool of one input, one model)."""
    return int(rng.random() * n) if n > 1 else 0


def _sequence_length(rng: np.random.Generator, s: ScenarioSettings) -> int:
    return max(1, int(round(rng.normal(s.sequence_length_mean, s.sequence_length_stddev))))


def sequence_steps(rng: np.random.Generator, spec: ModelSpec, seq_id: int | str, length: int, *,
                   end: bool = True) -> list[Step]:
    """START ... [END]: random values, each step expecting the running sum in the model's dtype."""
    dtype = _NUMPY[spec.inputs[0].datatype]
    values = rng.integers(0, SEQUENCE_VALUE_LIMIT, size=length).astype(dtype)
    # Running sum in the model's dtype, step by step, exactly as the model adds (float32 rounds).
    sums = np.cumsum(values, dtype=dtype)
    shape = (1, 1) if spec.max_batch_size > 0 else (1,)
    return [
        Step(model=spec.name, values=values[i:i + 1].reshape(shape), sequence_id=seq_id, start=i == 0,
             end=end and i == length - 1, expect=sums[i:i + 1].reshape(shape))
        for i in range(length)
    ]


@dataclass(frozen=True)
class PlanContext:
    rng: np.random.Generator
    settings: ScenarioSettings
    ids: IdSource
    models: Sequence[ModelSpec]
    # What never changes (the timeout scenario's 1 GiB of ones, a scenario's candidate models),
    # made once per context.
    constants: dict[tuple, Any] = field(default_factory=dict, compare=False)

    def constant(self, key: tuple, make: Callable[[], T]) -> T:
        if key not in self.constants:
            self.constants[key] = make()
        return self.constants[key]

    def of_kind(self, kind: str, **where: object) -> list[ModelSpec]:
        return [m for m in self.models if m.kind == kind and all(getattr(m, k) == v for k, v in where.items())]

    def pick(self, candidates: Sequence[ModelSpec]) -> ModelSpec:
        return candidates[below(self.rng, len(candidates))]

    def pooled(self, key: tuple, make: Callable[[np.random.Generator], T]) -> T:
        """What every lane of the worker shares (an input pool), made once per worker by `make`
        from a generator of its own, seeded by the worker and `key`: drawn from the lane's generator,
        each lane's later draws would depend on which lane happened to need it first, and a lane's
        plans must replay from the seed alone."""
        pools = self.ids.pools
        found = pools.get(key)
        if found is None:
            seed = (self.ids.seed, self.ids.worker_id, zlib.crc32(repr(key).encode()))
            found = pools[key] = make(np.random.default_rng(seed))
        return found


def plan_sequence_valid(ctx: PlanContext) -> Plan:
    spec = ctx.pick(_sequence_models(ctx))
    steps = sequence_steps(ctx.rng, spec, ctx.ids.take(spec), _sequence_length(ctx.rng, ctx.settings))
    return Plan("sequence_valid", tuple(steps), ctx.settings.sequence_deadline)


def plan_sequence_valid_valid(ctx: PlanContext) -> Plan:
    """Two complete sequences back to back on the same id (both are sent, unlike the reference's)."""
    spec = ctx.pick(_sequence_models(ctx))
    seq_id = ctx.ids.take(spec)
    first = sequence_steps(ctx.rng, spec, seq_id, _sequence_length(ctx.rng, ctx.settings))
    second = sequence_steps(ctx.rng, spec, seq_id, _sequence_length(ctx.rng, ctx.settings))
    return Plan("sequence_valid_valid", tuple(first + second), 2 * ctx.settings.sequence_deadline)


def plan_sequence_valid_no_end(ctx: PlanContext) -> Plan:
    spec = ctx.pick(_sequence_models(ctx))
    seq_id = ctx.ids.take(spec)
    first = sequence_steps(ctx.rng, spec, seq_id, _sequence_length(ctx.rng, ctx.settings))
    second = sequence_steps(ctx.rng, spec, seq_id, _sequence_length(ctx.rng, ctx.settings), end=False)
    return Plan("sequence_valid_no_end", tuple(first + second), 2 * ctx.settings.sequence_deadline, (seq_id,))


def plan_sequence_no_end(ctx: PlanContext) -> Plan:
    spec = ctx.pick(_sequence_models(ctx))
    seq_id = ctx.ids.take(spec)
    steps = sequence_steps(ctx.rng, spec, seq_id, _sequence_length(ctx.rng, ctx.settings), end=False)
    return Plan("sequence_no_end", tuple(steps), ctx.settings.sequence_deadline, (seq_id,))


def plan_sequence_no_start(ctx: PlanContext) -> Plan:
    """A first request without START on an id with no open sequence: the server must refuse it.

    A fresh id from the worker's block is never open (the reference used an id whose last sequence
    had ended, for the same reason)."""
    spec = ctx.pick(_sequence_models(ctx))
    step = sequence_steps(ctx.rng, spec, ctx.ids.take(spec), 1)[0]
    refused = Step(model=step.model, values=step.values, sequence_id=step.sequence_id, expect_error=NO_START_ERROR)
    return Plan("sequence_no_start", (refused,), ctx.settings.sequence_deadline)


def timeout_targets(models: Sequence[ModelSpec], client_deadline_s: float) -> list[ModelSpec]:
    """The zero models the timeout scenario sends to: those whose execute delay outlasts the client
    deadline, and of those only the quickest (the reference's `<backend>_nobatch_zero_1_float32`,
    1000 ms). One model, because every python stub that serves a 1 GiB input grows its own
    shared-memory pool to hold the input and the output and keeps it for its life (2 GiB each,
    engine/memory_budget.py); the quickest, because a queue of 1 GiB requests behind a 10 s model
    is load the host pays for without testing anything more."""
    slow = [m for m in models if m.kind == "zero" and m.execute_delay_ms / 1000.0 > client_deadline_s]
    quickest = min((m.execute_delay_ms for m in slow), default=0.0)
    return [m for m in slow if m.execute_delay_ms == quickest]


def large_tensor_targets(models: Sequence[ModelSpec]) -> list[ModelSpec]:
    return [m for m in models if m.kind == "identity" and m.inputs[0].datatype != "BYTES"]


def large_tensor_elements(settings: ScenarioSettings) -> int:
    return max(1, settings.large_tensor_bytes // 4)


def large_tensor_pools(models: Sequence[ModelSpec], elements: int) -> int:
    """How many input pools the large_tensor scenario has: one per datatype and shape its models
    take (the models that share both share a pool)."""
    return max(1, len({(m.inputs[0].datatype, echo_shape(m, elements)) for m in large_tensor_targets(models)}))


def large_tensor_pool_bytes(models: Sequence[ModelSpec], tensor_bytes: int, wanted: int, cap_bytes: int) -> int:
    """The bytes of the large_tensor scenario's pools in one worker: `wanted` inputs per pool
    ([scenarios] input_pool), fewer where all its pools together would pass `cap_bytes`
    (input_pool_bytes), one per pool at least."""
    if not large_tensor_targets(models):
        return 0
    elements = max(1, tensor_bytes // 4)
    pools = large_tensor_pools(models, elements)
    return pools * pool_size(wanted, cap_bytes // pools, 4 * elements) * 4 * elements


def timeout_elements(settings: ScenarioSettings) -> int:
    return max(1, settings.timeout_input_bytes // 4)


def plan_timeout(ctx: PlanContext) -> Plan:
    """A large input to a delayed zero model with a client deadline shorter than the delay."""
    deadline = ctx.settings.timeout_client_deadline
    slow = ctx.constant(("timeout models",), lambda: timeout_targets(ctx.models, deadline))
    spec = ctx.pick(slow or _need("timeout", "a zero model whose execute delay exceeds the client deadline"))
    elements = timeout_elements(ctx.settings)
    shape = (1, elements) if spec.max_batch_size > 0 else (elements,)
    # 1 GiB of ones by default, as a view of one element: a real array would cost every worker 1 GiB
    # of its own memory for the life of the run; shared memory holds the bytes once per host
    # (the run's host input), and an inline request serializes them as it goes.
    values = ctx.constant(("timeout", shape), lambda: np.broadcast_to(np.float32(1.0), shape))
    step = Step(model=spec.name, values=values, expect_error=DEADLINE_ERROR, timeout_s=deadline, constant_input=True,
                host_input=TIMEOUT_INPUT)
    return Plan("timeout", (step,), deadline + 30.0)


def plan_identity(ctx: PlanContext) -> Plan:
    # Faulty identity models generated for a run are driven like the healthy ones: the detectors
    # must find them from the data, and the healthy ones beside them are the negative control.
    candidates = ctx.constant(("identity models",),
                              lambda: ctx.of_kind("identity") + [m for m in ctx.models if m.kind in FAULT_KINDS])
    spec = ctx.pick(candidates or _need("identity", "an identity model"))
    return _echo_plan(ctx, "identity", spec, 1 + below(ctx.rng, 64), 30.0)


def plan_large_tensor(ctx: PlanContext) -> Plan:
    numeric = ctx.constant(("large_tensor models",), lambda: large_tensor_targets(ctx.models))
    spec = ctx.pick(numeric or _need("large_tensor", "a numeric identity model"))
    elements = large_tensor_elements(ctx.settings)
    # Its pools together stay within input_pool_bytes: each holds a share of it.
    pools = ctx.constant(("large_tensor pools",), lambda: large_tensor_pools(ctx.models, elements))
    return _echo_plan(ctx, "large_tensor", spec, elements, 60.0, pools)


def plan_streaming(ctx: PlanContext) -> Plan:
    spec = ctx.pick(ctx.of_kind("decoupled") or _need("streaming", "a decoupled model"))
    base = int(ctx.rng.integers(0, SEQUENCE_VALUE_LIMIT))
    count = ctx.settings.streaming_responses
    step = Step(model=spec.name, values=np.array([base], np.int32), stream_count=count,
                expect=np.arange(base, base + count, dtype=np.int32))
    return Plan("streaming", (step,), 30.0)


BYTES_ELEMENT_MAX = 23  # an identity model's BYTES input: 0 to this many random bytes per element


def echo_shape(spec: ModelSpec, elements: int) -> tuple[int, ...]:
    return (1, elements) if spec.max_batch_size > 0 else (elements,)


def echo_pool(ctx: PlanContext, datatype: str, shape: tuple[int, ...], share: int = 1) -> tuple[np.ndarray, ...]:
    """The distinct inputs the identity models of one datatype and shape are sent, made once per
    worker: a fresh random input per request cost more than sending it (milliseconds a 4 MiB
    large_tensor plan), and in shared memory each pooled input is written into its slot once, then
    only named. `input_pool` of them, as many as fit in 1/`share` of `input_pool_bytes`, one at least."""
    def make(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        elements = int(np.prod(shape))
        each = elements * (4 + BYTES_ELEMENT_MAX if datatype == "BYTES" else 4)  # BYTES: length + bytes, at most
        count = pool_size(ctx.settings.input_pool, ctx.settings.input_pool_bytes // share, each)
        return tuple(_echo_input(rng, datatype, shape) for _ in range(count))
    return ctx.pooled(("echo", datatype, shape, share), make)


def _echo_input(rng: np.random.Generator, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    elements = int(np.prod(shape))
    if datatype == "BYTES":
        values = np.array([rng.bytes(int(rng.integers(0, BYTES_ELEMENT_MAX + 1))) for _ in range(elements)],
                          dtype=np.object_)
    elif datatype == "FP32":
        values = rng.random(elements, dtype=np.float32)  # a fraction of standard_normal's cost
    else:
        values = rng.integers(-(1 << 30), 1 << 30, size=elements).astype(_NUMPY[datatype])
    values = values.reshape(shape)
    values.flags.writeable = False  # every request that draws it sends and expects this very array
    return values


def _echo_plan(ctx: PlanContext, scenario: str, spec: ModelSpec, elements: int, deadline_s: float,
               share: int = 1) -> Plan:
    """One request to an identity model: a pooled input, expected back as it went (constant: the
    executor writes it into a shared-memory slot once, by the array's identity; BYTES too). Such a
    request never changes: it is one of the plans made once per worker for this model and shape,
    one per pooled input (prebuilt), picked with the one draw that picks the input."""
    def make(_: np.random.Generator) -> tuple[Plan, ...]:
        pool = echo_pool(ctx, spec.inputs[0].datatype, echo_shape(spec, elements), share)
        return tuple(Plan(scenario, (Step(model=spec.name, values=values, expect=values, constant_input=True,
                                          prebuilt=True),), deadline_s) for values in pool)
    plans = ctx.pooled(("echo plans", scenario, spec.name, elements, share), make)
    return plans[below(ctx.rng, len(plans))]


def _sequence_models(ctx: PlanContext) -> list[ModelSpec]:
    # Only the python accumulators: the ONNX/TorchScript ones need implicit state (not here).
    found = [m for m in ctx.of_kind("sequence", backend="python") if m.sequence and m.sequence.expires_state]
    return found or _need("sequence", "a sequence model")


def _need(scenario: str, what: str) -> list[ModelSpec]:
    raise PlanError(f"scenario {scenario!r} needs {what} among the run's models")


class PlanError(ValueError):
    """A scenario cannot run with the models this run has (reported at start-up, not mid-run)."""


PLANNERS: dict[str, Callable[[PlanContext], Plan]] = {
    "sequence_valid": plan_sequence_valid,
    "sequence_valid_valid": plan_sequence_valid_valid,
    "sequence_valid_no_end": plan_sequence_valid_no_end,
    "sequence_no_end": plan_sequence_no_end,
    "sequence_no_start": plan_sequence_no_start,
    "timeout": plan_timeout,
    "identity": plan_identity,
    "large_tensor": plan_large_tensor,
    "streaming": plan_streaming,
}
# `crashing_client` and `steady_load` are not request plans: the worker runs them itself.
PROCESS_SCENARIOS = ("crashing_client", "steady_load")
