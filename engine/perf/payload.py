"""A point's request, built once: the input tensor, its expected answer, and the exact bytes each
protocol puts on the wire (a serialized gRPC ModelInferRequest, or an HTTP/1.1 request with the
binary-tensor body). Lanes send these same bytes for every request, so the hot path builds nothing:
no protobuf message and no JSON per request."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import serialize_byte_tensor

from model_repo_gen import ModelSpec
from shm import Slot

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


def _shm_parameters(parameters: object, slot: Slot) -> None:
    # The KServe shared-memory extension: the tensor lives at (region, offset, byte_size).
    parameters["shared_memory_region"].string_param = slot.region  # type: ignore[index]
    parameters["shared_memory_byte_size"].int64_param = slot.byte_size  # type: ignore[index]
    parameters["shared_memory_offset"].int64_param = slot.offset  # type: ignore[index]


def grpc_request(model: str, tensor: InputTensor, in_slot: Slot | None = None,
                 out_slot: Slot | None = None) -> bytes:
    """A serialized ModelInferRequest (also the payload of a ModelStreamInfer message)."""
    request = service_pb2.ModelInferRequest(model_name=model)
    entry = request.inputs.add()
    entry.name, entry.datatype = tensor.name, tensor.datatype
    entry.shape.extend(tensor.shape)
    if in_slot is not None:
        _shm_parameters(entry.parameters, in_slot)
    else:
        request.raw_input_contents.append(tensor.raw)
    output = request.outputs.add()
    output.name = tensor.output
    if out_slot is not None:
        _shm_parameters(output.parameters, out_slot)
    return request.SerializeToString()


def http_request(host: str, model: str, tensor: InputTensor, in_slot: Slot | None = None,
                 out_slot: Slot | None = None) -> bytes:
    """A complete HTTP/1.1 keep-alive request: head and body, built with tritonclient's own
    body encoder (JSON header plus binary tensors, the binary-data extension)."""
    entry = httpclient.InferInput(tensor.name, list(tensor.shape), tensor.datatype)
    if in_slot is not None:
        entry.set_shared_memory(in_slot.region, in_slot.byte_size, offset=in_slot.offset)
    else:
        entry.set_data_from_numpy(tensor.array, binary_data=True)
    output = httpclient.InferRequestedOutput(tensor.output, binary_data=out_slot is None)
    if out_slot is not None:
        output.set_shared_memory(out_slot.region, out_slot.byte_size, offset=out_slot.offset)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([entry], outputs=[output])
    head = [f"POST /v2/models/{model}/infer HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    if json_size is None:  # every tensor in shared memory: the body is JSON alone
        head.append("Content-Type: application/json")
    else:
        head += ["Content-Type: application/octet-stream", f"Inference-Header-Content-Length: {json_size}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def http_get(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def mismatch(got: bytes | memoryview, expected: bytes) -> str:
    """"" when the answer is right, else what is wrong with it, in one line."""
    got = bytes(got)
    if got == expected:
        return ""
    if len(got) != len(expected):
        return f"answer has {len(got)} bytes, expected {len(expected)}"
    first = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
    return f"answer differs from the expected one from byte {first} of {len(expected)}"
