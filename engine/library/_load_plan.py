"""What the load generator sends: `LoadPlan`, a model with a pool of input rows and, optionally,
the exact outputs each row must get back; resolved against the server into the `[[load]]` entry
the workers run (workers/user_load.py), so a plan is checked with the same one-line LoadErrors."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

from engine.config import InputSection, LoadSection
from workers.user_load import LoadError, ResolvedLoad, resolve_loads

Row = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class LoadPlan:
    """Requests of one model. Each request sends one row of `inputs`, drawn at random from the pool
    by the run's seed; with `expected`, the answer to row i must equal `expected[i]` exactly (output
    name -> array), else the request counts as wrong. Arrays are shaped as sent: with the batch
    dimension first when the model batches (every row the same batch size)."""

    model: str
    inputs: Sequence[Row]
    expected: Sequence[Row] | None = None
    weight: int = 100  # its share of the requests when several plans are driven together
    sequence: bool = False  # send START ... END sequences (about 16 steps each) of rows instead


def resolve_plans(plans: Sequence[LoadPlan], grpc_url: str) -> tuple[ResolvedLoad, ...]:
    """Each plan checked against the model on the server (names, datatypes, batch size) and made the
    `[[load]]` entry a worker drives, with the plan's rows as its data."""
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        entries = [_entry(client, plan, grpc_url) for plan in plans]
        resolved = resolve_loads(entries, grpc_url)
    except LoadError as exc:  # the workers' words for a [[load]] entry, said of the plan
        raise LoadError(str(exc).replace("[[load]] ", "LoadPlan ", 1)) from None
    finally:
        client.close()
    return tuple(dataclasses.replace(load, data="rows", rows=_rows(plan), expect=_expect(plan, load))
                 for plan, load in zip(plans, resolved))


def _entry(client: grpcclient.InferenceServerClient, plan: LoadPlan, grpc_url: str) -> LoadSection:
    where = f"LoadPlan {plan.model}"
    if not plan.inputs:
        raise LoadError(f"{where}: inputs: give at least one row (input name -> array)")
    if plan.expected is not None and len(plan.expected) != len(plan.inputs):
        raise LoadError(f"{where}: {len(plan.inputs)} input rows but {len(plan.expected)} expected rows")
    if plan.weight < 1:
        raise LoadError(f"{where}: weight = {plan.weight}: must be 1 or more")
    if not client.is_model_ready(plan.model):
        resolve_loads([LoadSection(model=plan.model)], grpc_url)  # raises, naming the models the server has
    metadata = client.get_model_metadata(plan.model, as_json=True)
    batches = int(client.get_model_config(plan.model, as_json=True)["config"].get("max_batch_size", 0)) > 0
    datatypes = {t["name"]: t["datatype"] for t in metadata.get("inputs", [])}
    first = plan.inputs[0]
    names = list(first)
    for i, row in enumerate(plan.inputs):
        if list(row) != names:
            raise LoadError(f"{where}: inputs[{i}] has inputs {list(row)}, inputs[0] has {names}")
        for name, array in row.items():
            _check_array(where, f"inputs[{i}][{name!r}]", np.asarray(array), datatypes.get(name))
    arrays = [np.asarray(first[name]) for name in names]
    sizes = {a.shape[0] for a in arrays if a.ndim}
    if batches and (len(sizes) != 1 or any(a.ndim == 0 for a in arrays)):
        raise LoadError(f"{where}: the model batches: every input needs the same batch size as its first "
                        f"dimension, got shapes {[list(a.shape) for a in arrays]}")
    declared = tuple(InputSection(name=name, datatype=datatypes.get(name, ""),
                                  shape=tuple(a.shape[1:] if batches else a.shape))
                     for name, a in zip(names, arrays))
    return LoadSection(model=plan.model, inputs=declared, batch_size=sizes.pop() if batches else 1,
                       weight=plan.weight, sequence=plan.sequence)


def _check_array(where: str, what: str, array: np.ndarray, datatype: str | None) -> None:
    if datatype is None:
        return  # not an input of the model: resolve_loads names the inputs it has
    if datatype == "BYTES":
        if array.dtype.kind not in "OSU":
            raise LoadError(f"{where}: {what} is {array.dtype}; the model's input is BYTES (bytes or str objects)")
    elif array.dtype != np.dtype(triton_to_np_dtype(datatype)):
        raise LoadError(f"{where}: {what} is {array.dtype} ({np_to_triton_dtype(array.dtype)}); "
                        f"the model's input is {datatype} ({np.dtype(triton_to_np_dtype(datatype))})")


def _rows(plan: LoadPlan) -> tuple[tuple[tuple[str, np.ndarray], ...], ...]:
    # In the order of the first row's names: the first is the step's `values`, the rest its extras,
    # matching the resolved model's inputs one for one.
    names = list(plan.inputs[0])
    return tuple(tuple((name, _bytes_safe(np.ascontiguousarray(row[name]))) for name in names)
                 for row in plan.inputs)


def _expect(plan: LoadPlan, load: ResolvedLoad) -> tuple[tuple[tuple[str, np.ndarray], ...], ...]:
    if plan.expected is None:
        return ()
    outputs = [t.name for t in load.spec.outputs]
    for i, row in enumerate(plan.expected):
        unknown = [name for name in row if name not in outputs]
        if unknown:
            raise LoadError(f"LoadPlan {plan.model}: expected[{i}] names {unknown}, not outputs "
                            f"(outputs: {', '.join(outputs)})")
    return tuple(tuple((name, _bytes_safe(np.ascontiguousarray(values))) for name, values in row.items())
                 for row in plan.expected)


def _bytes_safe(array: np.ndarray) -> np.ndarray:
    """BYTES tensors as object arrays of bytes, as tritonclient sends them and answers compare."""
    if array.dtype.kind in "SU":
        return np.array([v.encode() if isinstance(v, str) else bytes(v) for v in array.reshape(-1)],
                        dtype=np.object_).reshape(array.shape)
    return array
