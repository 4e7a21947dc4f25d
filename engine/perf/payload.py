"""A point's request, built once: the input tensor, its expected answer, and the exact bytes each
protocol puts on the wire (a serialized gRPC ModelInferRequest, or an HTTP/1.1 request with the
binary-tensor body), made by the workers' own request builders (workers/wire/). Lanes send these
same bytes for every request, so the hot path builds nothing: no protobuf message and no JSON per
request."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tritonclient.utils import serialize_byte_tensor

from model_repo_gen import ModelSpec
from shm import Slot
from workers.wire.grpc_message import TensorRef, infer_request
from workers.wire.http_message import http_request as build_http_request

BYTES_ELEMENT = 8  # bytes per element of a BYTES input (random printable characters)


@dataclass(frozen=True)
class InputTensor:
    """What every request of a point carries, and what the model must answer."""

    name: str
    output: str
    datatype: str
    shape: tuple[int, ...]  # the full request shape (batch dimension included when the model batches)
    array: np.ndarray
    raw: bytes  # the bytes Triton reads (BYTES: 4-byte length-prefixed elements)
    expected: bytes  # the raw output the model must answer


def make_input(spec: ModelSpec, batch_size: int, elements: int, seed: int) -> InputTensor:
    """Seeded data of the model's datatype: the same run seed gives the same bytes."""
    tensor = spec.inputs[0]
    shape = (batch_size, elements) if spec.max_batch_size else (elements,)
    rng = np.random.default_rng(seed)
    if tensor.datatype == "FP32":
        array: np.ndarray = rng.random(shape, dtype=np.float32)
    elif tensor.datatype == "INT32":
        array = rng.integers(-(1 << 20), 1 << 20, size=shape, dtype=np.int32)
    elif tensor.datatype == "BYTES":
        letters = rng.integers(ord("a"), ord("z") + 1, size=(*shape, BYTES_ELEMENT), dtype=np.uint8)
        array = np.array([row.tobytes() for row in letters.reshape(-1, BYTES_ELEMENT)], dtype=np.object_).reshape(shape)
    else:
        raise ValueError(f"{spec.name}: input datatype {tensor.datatype} is not supported by the perf sweep")
    raw = serialize_byte_tensor(array).item() if tensor.datatype == "BYTES" else array.tobytes()
    expected = bytes(len(raw)) if spec.kind == "zero" else raw
    return InputTensor(tensor.name, spec.outputs[0].name, tensor.datatype, shape, array, raw, expected)


def _refs(tensor: InputTensor, in_slot: Slot | None, out_slot: Slot | None) -> tuple[list[TensorRef], list[TensorRef]]:
    source = TensorRef(tensor.name, slot=in_slot) if in_slot is not None else TensorRef(tensor.name, array=tensor.array)
    return [source], [TensorRef(tensor.output, slot=out_slot)]


def grpc_request(model: str, tensor: InputTensor, in_slot: Slot | None = None,
                 out_slot: Slot | None = None) -> bytes:
    """A serialized ModelInferRequest (also the payload of a ModelStreamInfer message), built by the
    workers' own builder: stress and perf send the same bytes for the same request."""
    inputs, outputs = _refs(tensor, in_slot, out_slot)
    return infer_request(model, inputs, outputs)


def http_request(host: str, model: str, tensor: InputTensor, in_slot: Slot | None = None,
                 out_slot: Slot | None = None) -> bytes:
    """A complete HTTP/1.1 keep-alive request: head and body (workers/wire/http_message.py)."""
    inputs, outputs = _refs(tensor, in_slot, out_slot)
    return build_http_request(host, model, inputs, outputs)


def mismatch(got: bytes | memoryview, expected: bytes) -> str:
    """"" when the answer is right, else what is wrong with it, in one line."""
    got = bytes(got)
    if got == expected:
        return ""
    if len(got) != len(expected):
        return f"answer has {len(got)} bytes, expected {len(expected)}"
    first = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
    return f"answer differs from the expected one from byte {first} of {len(expected)}"
