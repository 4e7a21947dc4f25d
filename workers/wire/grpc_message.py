"""ModelInfer messages built and read directly as protobuf, for the lean gRPC path (unary calls and
ModelStreamInfer streams alike: a stream carries the same ModelInferRequest).

tritonclient's gRPC client builds InferInput objects, copies every tensor into them and then
again into the request; here a request is one ModelInferRequest filled in place (inline tensors
as raw bytes, shared-memory tensors as the extension's three parameters) and serialized once. The
answer is read through `WireResult`, which has the two methods of tritonclient's InferResult the
engine uses (as_numpy, and get_output for the shared-memory pool's read_output) at a third of
the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import service_pb2
from tritonclient.utils import (
    InferenceServerException,
    deserialize_bytes_tensor,
    np_to_triton_dtype,
    serialize_byte_tensor,
    triton_to_np_dtype,
)

from shm import Slot

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"


@dataclass(slots=True)  # made per request: not frozen, see plans.Step
class TensorRef:
    """One input or requested output: inline data, or a shared-memory slot (or neither, for an
    output the server sends back inline)."""

    name: str
    array: np.ndarray | None = None
    slot: Slot | None = None


def _shm(parameters, slot: Slot) -> None:
    parameters["shared_memory_region"].string_param = slot.region
    parameters["shared_memory_byte_size"].int64_param = slot.byte_size
    if slot.offset:
        parameters["shared_memory_offset"].int64_param = slot.offset


def raw_bytes(array: np.ndarray) -> bytes | memoryview:
    """The bytes Triton reads for a tensor: BYTES elements are 4-byte length-prefixed; numbers are
    the array's own memory (no copy when it is contiguous)."""
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        serialized = serialize_byte_tensor(array)
        return serialized.item() if serialized.size else b""
    if array.nbytes <= 4096:
        return array.tobytes()  # a small copy costs less than the view's set-up
    return memoryview(np.ascontiguousarray(array)).cast("B")


_RAW_INPUT_TAG = b"\x3a"  # ModelInferRequest field 7 (raw_input_contents), length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


HEAD_CACHE_SIZE = 4096  # request descriptions kept (identity: 64 shapes per model)
_heads: dict[tuple, bytes] = {}


def infer_request(model: str, inputs: list[TensorRef], outputs: list[TensorRef], *, sequence_id: int | str = 0,
                  sequence_start: bool = False, sequence_end: bool = False,
                  enable_empty_final_response: bool = False) -> bytes:
    """A serialized ModelInferRequest, with the sequence parameters tritonclient would send (and
    its flag asking a decoupled model for an empty final response). No outputs: all of them.

    The description (model, tensors, parameters) is built with protobuf; inline tensors' bytes are
    appended after it as raw_input_contents fields, written by hand: serialized protobuf messages
    merge when concatenated, and this way a tensor is copied once (into the message) instead of
    three times (tobytes, into the protobuf field, out again when serialized). A stateless
    request with inline tensors only is described by its model, names, types and shapes: that
    description is serialized once and kept (a protobuf build saved per request)."""
    key = None
    if not sequence_id and not enable_empty_final_response and all(ref.slot is None for ref in inputs) \
            and all(ref.slot is None for ref in outputs):
        key = (model, *[(ref.name, ref.array.dtype, ref.array.shape) for ref in inputs],  # type: ignore[union-attr]
               *[ref.name for ref in outputs])
        head = _heads.get(key)
        if head is not None:
            return _with_raw(head, [raw_bytes(ref.array) for ref in inputs])  # type: ignore[arg-type]
    request = service_pb2.ModelInferRequest(model_name=model)
    raws = []
    for ref in inputs:
        entry = request.inputs.add()
        entry.name = ref.name
        if ref.slot is not None:
            entry.datatype = ref.slot.datatype
            entry.shape.extend(ref.slot.shape)
            _shm(entry.parameters, ref.slot)
        else:
            array = ref.array
            entry.datatype = _datatype(array.dtype)
            entry.shape.extend(array.shape)
            raws.append(raw_bytes(array))
    for ref in outputs:
        output = request.outputs.add()
        output.name = ref.name
        if ref.slot is not None:
            _shm(output.parameters, ref.slot)
    if sequence_id:
        parameters = request.parameters
        if isinstance(sequence_id, str):
            parameters["sequence_id"].string_param = sequence_id
        else:
            parameters["sequence_id"].int64_param = sequence_id
        parameters["sequence_start"].bool_param = sequence_start
        parameters["sequence_end"].bool_param = sequence_end
    if enable_empty_final_response:
        request.parameters["triton_enable_empty_final_response"].bool_param = True
    head = request.SerializeToString()
    if key is not None:
        if len(_heads) >= HEAD_CACHE_SIZE:
            _heads.clear()  # a workload of ever new shapes: start over rather than grow
        _heads[key] = head
    return _with_raw(head, raws)


def _with_raw(head: bytes, raws: list[bytes | memoryview]) -> bytes:
    if not raws:
        return head
    parts: list[bytes | memoryview] = [head]
    for raw in raws:
        parts += (_RAW_INPUT_TAG, _varint(len(raw)), raw)
    return b"".join(parts)


_DATATYPES: dict[np.dtype, str] = {}
_NUMPY_TYPES: dict[str, np.dtype] = {}


def _datatype(dtype: np.dtype) -> str:
    name = _DATATYPES.get(dtype)
    if name is None:
        name = _DATATYPES[dtype] = "BYTES" if dtype == np.object_ else np_to_triton_dtype(dtype)
    return name


def _numpy_type(datatype: str) -> np.dtype:
    dtype = _NUMPY_TYPES.get(datatype)
    if dtype is None:
        dtype = _NUMPY_TYPES[datatype] = np.dtype(triton_to_np_dtype(datatype))
    return dtype


class WireResult:
    """A ModelInferResponse read as tritonclient's InferResult reads it (same arrays, same None
    for an output that is not there)."""

    __slots__ = ("_response",)

    def __init__(self, response: service_pb2.ModelInferResponse) -> None:
        self._response = response

    def get_output(self, name: str) -> service_pb2.ModelInferResponse.InferOutputTensor | None:
        for output in self._response.outputs:
            if output.name == name:
                return output
        return None

    def get_response(self) -> service_pb2.ModelInferResponse:
        return self._response

    def as_numpy(self, name: str) -> np.ndarray | None:
        response = self._response
        for index, output in enumerate(response.outputs):
            if output.name != name:
                continue
            shape = tuple(output.shape)
            if index < len(response.raw_output_contents):
                raw = response.raw_output_contents[index]
                if output.datatype == "BYTES":
                    return deserialize_bytes_tensor(raw).reshape(shape)
                return np.frombuffer(raw, dtype=_numpy_type(output.datatype)).reshape(shape)
            if len(output.contents.bytes_contents):
                return np.array(output.contents.bytes_contents, dtype=np.object_).reshape(shape)
            return np.empty(0, dtype=_numpy_type(output.datatype)).reshape(shape)
        return None


def infer_result(answer: bytes | memoryview) -> WireResult:
    return WireResult(service_pb2.ModelInferResponse.FromString(answer))


def stream_result(answer: bytes | memoryview) -> WireResult:
    """A ModelStreamInferResponse: its answer, or its in-band error raised as tritonclient's
    stream raises it (InferenceServerException with the server's message)."""
    response = service_pb2.ModelStreamInferResponse.FromString(answer)
    if response.error_message:
        raise InferenceServerException(msg=response.error_message)
    return WireResult(response.infer_response)
