"""The lean path's ModelInfer messages: a request equals, field for field, what tritonclient
builds for the same tensors and sequence flags; an answer reads as tritonclient's InferResult
reads it."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import InferResult, service_pb2
from tritonclient.grpc._utils import _get_inference_request
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from shm import Slot
from workers.wire.grpc_message import TensorRef, infer_request, infer_result, stream_result

RNG = np.random.default_rng(7)
CASES = {
    "fp32": [TensorRef("INPUT0", array=RNG.standard_normal((1, 16)).astype(np.float32))],
    "large": [TensorRef("INPUT0", array=RNG.standard_normal((1, 300_000)).astype(np.float32))],
    "fortran order": [TensorRef("INPUT0", array=np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)))],
    "bytes and two inputs": [TensorRef("INPUT0",
                                       array=np.array([b"", "é".encode(), b"\x00z"], np.object_).reshape(1, 3)),
                             TensorRef("INPUT1", array=np.ones((1, 2), np.int32))],
}
SEQUENCES = [{}, {"sequence_id": 77, "sequence_start": True}, {"sequence_id": "w1-5", "sequence_end": True},
             {"enable_empty_final_response": True}]


def _tritonclient_request(model: str, inputs: list[TensorRef], outputs: list[TensorRef], **sequence: object):
    tensors = []
    for ref in inputs:
        datatype = ("BYTES" if ref.array.dtype == np.object_
                    else {np.float32: "FP32", np.int32: "INT32"}[ref.array.dtype.type])
        tensor = grpcclient.InferInput(ref.name, list(ref.array.shape), datatype)
        if ref.slot is not None:
            tensor.set_shared_memory(ref.slot.region, ref.slot.byte_size, ref.slot.offset)
        else:
            tensor.set_data_from_numpy(ref.array)
        tensors.append(tensor)
    wanted = []
    for ref in outputs:
        output = grpcclient.InferRequestedOutput(ref.name)
        if ref.slot is not None:
            output.set_shared_memory(ref.slot.region, ref.slot.byte_size, ref.slot.offset)
        wanted.append(output)
    request = _get_inference_request(model_name=model, inputs=tensors, model_version="", request_id="",
                                     outputs=wanted, sequence_id=sequence.get("sequence_id", 0),
                                     sequence_start=sequence.get("sequence_start", False),
                                     sequence_end=sequence.get("sequence_end", False), priority=0, timeout=None,
                                     parameters=None)
    if sequence.get("enable_empty_final_response"):  # what tritonclient's stream_infer adds for decoupled models
        request.parameters["triton_enable_empty_final_response"].bool_param = True
    return request


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("sequence", SEQUENCES, ids=["stateless", "int id, start", "string id, end", "decoupled"])
def test_requests_equal_tritonclient_s(case: str, sequence: dict) -> None:
    inputs, outputs = CASES[case], [TensorRef("OUTPUT0")]
    ours = service_pb2.ModelInferRequest.FromString(infer_request("m", inputs, outputs, **sequence))
    assert ours == _tritonclient_request("m", inputs, outputs, **sequence)


def test_a_kept_description_carries_each_requests_own_tensors() -> None:
    """Stateless requests of one shape reuse their serialized description; each still carries its
    own bytes, and equals tritonclient's request for the same tensors."""
    rng = np.random.default_rng(3)
    for _ in range(3):
        for shape, dtype in [((1, 5), np.float32), ((1, 6), np.float32), ((1, 5), np.int32)]:
            inputs = [TensorRef("INPUT0", array=(rng.random(shape) * 100).astype(dtype))]
            ours = service_pb2.ModelInferRequest.FromString(infer_request("m", inputs, [TensorRef("OUTPUT0")]))
            assert ours == _tritonclient_request("m", inputs, [TensorRef("OUTPUT0")])
    other_model = [TensorRef("INPUT0", array=np.ones((1, 5), np.float32))]
    assert service_pb2.ModelInferRequest.FromString(infer_request("n", other_model, [])).model_name == "n"


def test_shared_memory_tensors_equal_tritonclient_s() -> None:
    data = np.ones((1, 8), np.float32)
    inputs = [TensorRef("INPUT0", array=data, slot=Slot("tee_run_w1_0", 4096, 32, "system", "FP32", (1, 8)))]
    outputs = [TensorRef("OUTPUT0", slot=Slot("tee_run_w1_0", 0, 32))]
    ours = service_pb2.ModelInferRequest.FromString(infer_request("m", inputs, outputs))
    assert ours == _tritonclient_request("m", inputs, outputs)
    assert not ours.raw_input_contents  # the tensor travels in the region, not in the message


def test_answers_read_as_tritonclient_reads_them() -> None:
    response = service_pb2.ModelInferResponse(model_name="m")
    values = {"A": RNG.standard_normal((2, 3)).astype(np.float32), "B": np.array([[b"xy", b""]], np.object_),
              "C": np.arange(4, dtype=np.int32)}
    for name, array in values.items():
        output = response.outputs.add()
        output.name, output.datatype = name, "BYTES" if array.dtype == np.object_ else str(array.dtype).upper()
        output.datatype = {"FLOAT32": "FP32"}.get(output.datatype, output.datatype)
        output.shape.extend(array.shape)
        raw = serialize_byte_tensor(array).item() if array.dtype == np.object_ else array.tobytes()
        response.raw_output_contents.append(raw)
    ours, theirs = infer_result(response.SerializeToString()), InferResult(response)
    for name in (*values, "missing"):
        mine, reference = ours.as_numpy(name), theirs.as_numpy(name)
        if reference is None:
            assert mine is None
        else:
            assert mine.shape == reference.shape and mine.tolist() == reference.tolist()
    assert ours.get_output("B").datatype == "BYTES" and ours.get_output("missing") is None


def test_stream_answers_and_their_in_band_errors() -> None:
    inner = service_pb2.ModelInferResponse(model_name="m")
    output = inner.outputs.add()
    output.name, output.datatype = "OUT", "INT32"
    output.shape.append(2)
    inner.raw_output_contents.append(np.array([4, 5], np.int32).tobytes())
    inner.parameters["triton_final_response"].bool_param = True
    good = service_pb2.ModelStreamInferResponse(infer_response=inner).SerializeToString()
    result = stream_result(good)
    assert result.as_numpy("OUT").tolist() == [4, 5]
    assert result.get_response().parameters["triton_final_response"].bool_param
    bad = service_pb2.ModelStreamInferResponse(error_message="must specify the START flag").SerializeToString()
    with pytest.raises(InferenceServerException) as raised:
        stream_result(bad)
    assert str(raised.value) == "must specify the START flag"  # as tritonclient's stream gives it
