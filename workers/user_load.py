"""Drive models of the user's own: `[[load]]` entries resolved against the server at start-up.

Inputs come from the entry or the model's metadata; data is random, zero, or rows of a JSON file
in perf_analyzer's `--input-data` format, whose `validation_data` rows are checked against the
answers. Anything that does not exist on the server is a start-up error that names it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import triton_to_np_dtype

from model_repo_gen.spec import ModelSpec, TensorSpec

from .plans import Plan, PlanContext, Step, below, pool_size

STATELESS_DEADLINE_S = 60.0  # a single request's plan must finish within this


class LoadError(ValueError):
    """A `[[load]]` entry cannot be driven as written; the message says which and why."""


@dataclass(frozen=True)
class ResolvedLoad:
    scenario: str  # "load:<model>" (numbered when a model has several entries)
    spec: ModelSpec  # kind "user"; inputs with their full request shapes
    data: str  # random, zero or file
    rows: tuple[tuple[tuple[str, np.ndarray], ...], ...]  # file rows: (input name, data) per input
    expect: tuple[tuple[tuple[str, np.ndarray], ...], ...]  # validation rows (parallel to rows), or ()
    sequence: bool
    weight: int = 100  # of its scenario in the draw
    protocol: str = ""  # "" = the worker's
    shm: str = ""  # "" = the worker's; "none" = inline
    load: str = ""  # "" or closed: drawn by the worker's lanes; constant or poisson: its own schedule
    rate: float = 0.0  # its own schedule's plans/s (0 = the worker's rate)
    output_bytes: int = 0  # shared memory for each output of a request; 0 = answers inline


def _array(values: Any, datatype: str, shape: Sequence[int] | None, what: str) -> np.ndarray:
    dtype = triton_to_np_dtype(datatype)
    if datatype == "BYTES":
        flat = np.array([v.encode() if isinstance(v, str) else bytes(v) for v in np.ravel(values)], dtype=np.object_)
    else:
        flat = np.asarray(values, dtype=dtype).reshape(-1)
    if shape is None:
        return flat
    if int(np.prod(shape)) != flat.size:
        raise LoadError(f"{what}: {flat.size} values do not fill shape {list(shape)}")
    return flat.reshape(shape)


def _read_rows(path: Path, model: str, inputs: dict[str, TensorSpec], outputs: dict[str, str],
               batch: int) -> tuple[tuple, tuple]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LoadError(f"[[load]] {model}: cannot read input data {path}: {exc}") from None
    rows, expect = [], []
    for i, row in enumerate(document.get("data", [])):
        tensors = []
        for name, spec in inputs.items():
            if name not in row:
                raise LoadError(f"[[load]] {model}: {path} data[{i}] has no input {name!r}")
            entry = row[name]
            content = entry.get("content", entry.get("b64")) if isinstance(entry, dict) else entry
            shape = entry.get("shape") if isinstance(entry, dict) else None
            one = _array(content, spec.datatype, shape or spec.dims, f"{path} data[{i}].{name}")
            tensors.append((name, np.stack([one] * batch) if batch else one))
        rows.append(tuple(tensors))
    for i, row in enumerate(document.get("validation_data", [])):
        checks = []
        for name, values in row.items():
            if name not in outputs:
                raise LoadError(f"[[load]] {model}: {path} validation_data[{i}] names {name!r}, "
                                f"not an output (outputs: {', '.join(outputs)})")
            content = values.get("content") if isinstance(values, dict) else values
            one = _array(content, outputs[name], None, f"{path} validation_data[{i}].{name}")
            checks.append((name, np.concatenate([one] * batch) if batch else one))
        expect.append(tuple(checks))
    if not rows:
        raise LoadError(f"[[load]] {model}: {path} has no rows under \"data\"")
    if expect and len(expect) != len(rows):
        raise LoadError(f"[[load]] {model}: {path} has {len(rows)} data rows but {len(expect)} validation rows")
    return tuple(rows), tuple(expect)


def resolve_loads(entries: Sequence[Any], grpc_url: str, base_dir: Path = Path(".")) -> tuple[ResolvedLoad, ...]:
    """Check each `[[load]]` entry against the server and fix its shapes and data."""
    if not entries:
        return ()
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        return tuple(_resolve(client, entry, i, entries, base_dir) for i, entry in enumerate(entries))
    finally:
        client.close()


def _resolve(client: grpcclient.InferenceServerClient, entry: Any, index: int, entries: Sequence[Any],
             base_dir: Path) -> ResolvedLoad:
    model = entry.model
    if not client.is_model_ready(model):
        names = [m.name for m in client.get_model_repository_index().models]
        raise LoadError(f"[[load]] model {model!r} is not ready on the server (models: {', '.join(names) or 'none'})")
    metadata = client.get_model_metadata(model, as_json=True)
    config = client.get_model_config(model, as_json=True)["config"]
    max_batch = int(config.get("max_batch_size", 0))
    known = {t["name"]: t for t in metadata.get("inputs", [])}
    wanted = entry.inputs or tuple(_Declared(name) for name in known)
    inputs: dict[str, TensorSpec] = {}
    for declared in wanted:
        if declared.name not in known:
            raise LoadError(f"[[load]] {model}: no input {declared.name!r} (inputs: {', '.join(known)})")
        meta_shape = [int(d) for d in known[declared.name]["shape"]]
        shape = tuple(declared.shape) or tuple(meta_shape[1:] if max_batch > 0 else meta_shape)
        if any(d < 0 for d in shape):
            raise LoadError(f"[[load]] {model}: input {declared.name!r} has a variable shape {list(shape)}; "
                            "give its shape in [[load]] inputs")
        inputs[declared.name] = TensorSpec(declared.name, declared.datatype or known[declared.name]["datatype"], shape)
    if max_batch == 0 and entry.batch_size != 1:
        raise LoadError(f"[[load]] {model}: batch_size {entry.batch_size}, but the model does not batch")
    if max_batch and entry.batch_size > max_batch:
        raise LoadError(f"[[load]] {model}: batch_size {entry.batch_size} exceeds its max_batch_size {max_batch}")
    outputs = {t["name"]: t["datatype"] for t in metadata.get("outputs", [])}
    batch = entry.batch_size if max_batch else 0
    output_bytes = entry.output_bytes or _fixed_output_bytes(metadata.get("outputs", []), batch, max_batch)
    rows: tuple = ()
    expect: tuple = ()
    if entry.data not in ("random", "zero"):
        rows, expect = _read_rows(base_dir / entry.data, model, inputs, outputs, batch)
    full = tuple(TensorSpec(t.name, t.datatype, ((batch,) if batch else ()) + t.dims) for t in inputs.values())
    same_model = [e for e in entries if e.model == model]
    scenario = f"load:{model}" + (f"#{index}" if len(same_model) > 1 else "")
    spec = ModelSpec(name=model, kind="user", backend=str(config.get("backend") or config.get("platform", "")),
                     max_batch_size=max_batch, inputs=full,
                     outputs=tuple(TensorSpec(n, d, ()) for n, d in outputs.items()),
                     instance_count=0, instance_kind="")
    return ResolvedLoad(scenario, spec, entry.data, rows, expect, bool(entry.sequence), entry.weight, entry.protocol,
                        entry.shm, entry.load, entry.rate, output_bytes)


def _fixed_output_bytes(outputs: list[dict[str, Any]], batch: int, max_batch: int) -> int:
    """The largest output's bytes where the metadata fixes every output's shape and none is BYTES
    (the room each output gets in shared memory); 0 where one is variable: answers come inline."""
    sizes = []
    for output in outputs:
        shape = [int(d) for d in output["shape"]]
        dims = shape[1:] if max_batch > 0 else shape
        if output["datatype"] == "BYTES" or any(d < 0 for d in dims):
            return 0
        itemsize = np.dtype(triton_to_np_dtype(output["datatype"])).itemsize
        sizes.append(max(batch, 1) * int(np.prod(dims, dtype=np.int64)) * itemsize)
    return max(sizes, default=0)


@dataclass(frozen=True)
class _Declared:
    name: str
    datatype: str = ""
    shape: tuple[int, ...] = ()


def _random(rng: np.random.Generator, tensor: TensorSpec, zero: bool) -> np.ndarray:
    dtype = triton_to_np_dtype(tensor.datatype)
    if tensor.datatype == "BYTES":
        count = int(np.prod(tensor.dims))
        return np.array([b"" if zero else rng.bytes(8) for _ in range(count)], dtype=np.object_).reshape(tensor.dims)
    if zero:
        return np.zeros(tensor.dims, dtype)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(tensor.dims).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, tensor.dims).astype(np.bool_)
    return rng.integers(0, 100, tensor.dims).astype(dtype)


Tensors = tuple[tuple[str, np.ndarray], ...]  # (input name, data) for every input of a request


def input_pool(ctx: PlanContext, load: ResolvedLoad) -> tuple[Tensors, ...]:
    """The distinct inputs a random or zero load draws from, made once per worker: drawing a
    fresh random megabyte costs milliseconds, far more than sending it, and in shared memory each
    pooled input is written into its slot once and then only named by the requests that send it.
    `input_pool` of them (enough that a cache in the server or the model does not see one input
    over and over), as many as fit in `input_pool_bytes`, one at least; zeros need only one.
    Shared by the worker's lanes (PlanContext.pooled), not made again by each."""
    def make(rng: np.random.Generator) -> tuple[Tensors, ...]:
        size = sum(_nbytes(t) for t in load.spec.inputs)
        count = 1 if load.data == "zero" else pool_size(ctx.settings.input_pool, ctx.settings.input_pool_bytes, size)
        return tuple(tuple((t.name, _random(rng, t, load.data == "zero")) for t in load.spec.inputs)
                     for _ in range(count))
    return ctx.pooled(("input_pool", load.scenario), make)


def _nbytes(tensor: TensorSpec) -> int:
    """A tensor's bytes in a request (BYTES elements as the 8 random bytes made for each, plus their length)."""
    count = int(np.prod(tensor.dims))
    return count * (12 if tensor.datatype == "BYTES" else np.dtype(triton_to_np_dtype(tensor.datatype)).itemsize)


def _rows_nbytes(load: ResolvedLoad) -> int:
    return sum(data.nbytes for row in load.rows for _, data in row)


def pooled_plans(ctx: PlanContext, load: ResolvedLoad) -> tuple[Plan, ...]:
    """A plan of one request for each input of the pool of a single-request (not sequence) load:
    nothing of such a request changes between sends, so its steps are `prebuilt`."""
    return tuple(Plan(load.scenario, (Step(model=load.spec.name, values=tensors[0][1], extra_inputs=tuple(tensors[1:]),
                                           protocol=load.protocol, shm=load.shm, constant_input=True,
                                           output_bytes=load.output_bytes, prebuilt=True),), STATELESS_DEADLINE_S)
                 for tensors in input_pool(ctx, load))


def _worker_plans(ctx: PlanContext, load: ResolvedLoad) -> tuple[Plan, ...]:
    """The worker's pooled plans of a single-request load (made by the first lane to ask)."""
    return ctx.pooled(("plans", load.scenario), lambda _: pooled_plans(ctx, load))


class UserPlanner:
    """`plan_user` for one [[load]] entry, as a worker's planner: a single-request entry's pooled
    plans are looked up once per pool store (the worker's, `ctx.ids.pools`), not on every request."""

    __slots__ = ("load", "_pools", "_plans")

    def __init__(self, load: ResolvedLoad) -> None:
        self.load = load
        self._pools: dict | None = None
        self._plans: tuple[Plan, ...] = ()

    def __call__(self, ctx: PlanContext) -> Plan:
        load = self.load
        if load.sequence or load.rows:
            return plan_user(ctx, load)
        if self._pools is not ctx.ids.pools:
            self._plans, self._pools = _worker_plans(ctx, load), ctx.ids.pools
        plans = self._plans
        return plans[below(ctx.rng, len(plans))]


def plan_user(ctx: PlanContext, load: ResolvedLoad) -> Plan:
    """One request (or one sequence, START ... END) of a user's model. Its inputs come from a
    pool (the random or zero pool, or a file's rows): the same arrays again and again, so shared
    memory writes each one once (`constant_input`); a file's rows only where they all fit in
    `input_pool_bytes`, else each request's row is copied into a slot of its own, as it is sent.
    A single request from the random or zero pool is one of a few plans made once per worker
    (`pooled_plans`), drawn with the same one number as its pooled input was."""
    if not load.sequence and not load.rows:
        plans = _worker_plans(ctx, load)
        return plans[below(ctx.rng, len(plans))]
    steps_count = max(1, int(round(ctx.rng.normal(ctx.settings.sequence_length_mean,
                                                 ctx.settings.sequence_length_stddev)))) if load.sequence else 1
    seq_id = ctx.ids.take(load.spec) if load.sequence else 0
    steps = []
    for index in range(steps_count):
        if load.rows:
            row = int(ctx.rng.integers(len(load.rows)))
            tensors = load.rows[row]
            checks = load.expect[row] if load.expect else ()
            constant = ctx.constant(("rows_fit", load.scenario),
                                    lambda: _rows_nbytes(load) <= ctx.settings.input_pool_bytes)
        else:
            pool = input_pool(ctx, load)
            tensors = pool[below(ctx.rng, len(pool))]
            checks = ()
            constant = True
        steps.append(Step(model=load.spec.name, values=tensors[0][1], extra_inputs=tuple(tensors[1:]),
                          extra_expect=tuple(checks), sequence_id=seq_id, start=load.sequence and index == 0,
                          end=load.sequence and index == steps_count - 1, protocol=load.protocol, shm=load.shm,
                          constant_input=constant, output_bytes=load.output_bytes))
    return Plan(load.scenario, tuple(steps), ctx.settings.sequence_deadline if load.sequence else STATELESS_DEADLINE_S)
