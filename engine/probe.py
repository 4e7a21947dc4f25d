"""One validated request (or sequence, or stream) per generated model.

Used at start-up to prove that every model serves and answers as its spec promises, and as the
fresh-connection probe of a suspected stall. Each probe opens its own gRPC connection.
"""

from __future__ import annotations

import itertools
import queue
import time
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient

from model_repo_gen.spec import (
    DECOUPLED_COUNT_INPUT,
    DECOUPLED_OUTPUT,
    DECOUPLED_VALUE_INPUT,
    IDENTITY_INPUT,
    IDENTITY_OUTPUT,
    SEQUENCE_INPUT,
    SEQUENCE_OUTPUT,
    ModelSpec,
)

_NUMPY_TYPES = {"FP32": np.float32, "INT32": np.int32, "UINT64": np.uint64, "BYTES": np.object_}
_probe_ids = itertools.count(1)


@dataclass(frozen=True)
class ProbeResult:
    model: str
    ok: bool
    seconds: float
    detail: str  # what was checked, or what went wrong


def _sample(spec: ModelSpec, length: int = 16) -> np.ndarray:
    """A deterministic input for the model's first input; batched models get a batch of 1."""
    tensor = spec.inputs[0]
    if tensor.datatype == "BYTES":
        data = np.array([b"\x00bin", "ünï".encode(), b"probe"] * (length // 3) + [b"x"] * (length % 3),
                        dtype=np.object_)
    else:
        data = np.arange(1, length + 1).astype(_NUMPY_TYPES[tensor.datatype])
    return data.reshape((1, length)) if spec.max_batch_size > 0 else data


def _infer_input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _stateless(client: grpcclient.InferenceServerClient, spec: ModelSpec, timeout: float) -> str:
    data = _sample(spec)
    result = client.infer(spec.name, [_infer_input(IDENTITY_INPUT, data, spec.inputs[0].datatype)],
                          client_timeout=timeout)
    got = result.as_numpy(IDENTITY_OUTPUT)
    want = np.zeros_like(data) if spec.kind == "zero" else data
    if got is None or got.shape != want.shape or not np.array_equal(got, want):
        raise AssertionError(f"{IDENTITY_OUTPUT} = {got!r}, expected {want!r}")
    return f"{spec.kind}: {IDENTITY_OUTPUT} matches for shape {list(data.shape)}"


def _sequence(client: grpcclient.InferenceServerClient, spec: ModelSpec, timeout: float) -> str:
    assert spec.sequence is not None
    values = [3, 5, 7, 11]
    dtype = _NUMPY_TYPES[spec.inputs[0].datatype]
    seq_id: int | str = next(_probe_ids) + (1 << 40)  # far from the workers' correlation-id blocks
    if spec.sequence.correlation_id_type == "STRING":
        seq_id = f"probe-{seq_id}"
    total = dtype(0)
    for step, value in enumerate(values):
        shape = [1, 1] if spec.max_batch_size > 0 else [1]
        data = np.full(shape, value, dtype=dtype)
        result = client.infer(spec.name, [_infer_input(SEQUENCE_INPUT, data, spec.inputs[0].datatype)],
                              sequence_id=seq_id, sequence_start=step == 0, sequence_end=step == len(values) - 1,
                              client_timeout=timeout)
        total = dtype(total + dtype(value))
        got = result.as_numpy(SEQUENCE_OUTPUT)
        if got is None or got.reshape(-1)[0] != total:
            raise AssertionError(f"step {step}: {SEQUENCE_OUTPUT} = {got!r}, expected running sum {total}")
    return f"sequence {seq_id!r}: {len(values)} steps, running sums match"


def _decoupled(client: grpcclient.InferenceServerClient, spec: ModelSpec, timeout: float) -> str:
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        base, count = 40, 3
        inputs = [_infer_input(DECOUPLED_VALUE_INPUT, np.array([base], np.int32), "INT32"),
                  _infer_input(DECOUPLED_COUNT_INPUT, np.array([count], np.int32), "INT32")]
        client.async_stream_infer(spec.name, inputs, request_id="probe", enable_empty_final_response=True)
        got: list[int] = []
        deadline = time.monotonic() + timeout
        while True:
            result, error = responses.get(timeout=max(0.01, deadline - time.monotonic()))
            if error is not None:
                raise AssertionError(f"stream error: {error}")
            final = result.get_response().parameters["triton_final_response"].bool_param
            out = result.as_numpy(DECOUPLED_OUTPUT)
            if out is not None:
                got.append(int(out.reshape(-1)[0]))
            if final:
                break
    finally:
        client.stop_stream()
    want = [base + i for i in range(count)]
    if got != want:
        raise AssertionError(f"responses {got}, expected {want}")
    return f"decoupled: {count} responses in order, then the final flag"


def probe_model(grpc_url: str, spec: ModelSpec, timeout: float | None = None) -> ProbeResult:
    """Send one validated request (a short sequence, a stream) to `spec.name` on a new connection."""
    if timeout is None:
        timeout = 30.0 + 4 * spec.execute_delay_ms / 1000.0  # a sequence probe takes four delays
    started = time.monotonic()
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        if spec.decoupled:
            detail = _decoupled(client, spec, timeout)
        elif spec.is_sequence:
            detail = _sequence(client, spec, timeout)
        else:
            detail = _stateless(client, spec, timeout)
        ok = True
    except Exception as exc:  # any failure is the probe's finding, reported, not raised
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return ProbeResult(model=spec.name, ok=ok, seconds=time.monotonic() - started, detail=detail)


def probe_table(results: list[ProbeResult]) -> str:
    """One line per probed model: result, seconds, and what was checked or went wrong."""
    width = max((len(r.model) for r in results), default=5)
    rows = [f"  {'model':<{width}}  result  seconds  detail"]
    rows += [f"  {r.model:<{width}}  {'ok' if r.ok else 'FAIL':<6}  {r.seconds:7.2f}  {r.detail}" for r in results]
    return "\n".join(rows)
