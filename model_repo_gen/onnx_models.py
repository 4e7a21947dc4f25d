"""ONNX model files of the generated identity and sequence-accumulator models.

The accumulator keeps its running sum in Triton's implicit state (sequence_batching.state):
    acc          = (START != 0 ? 0 : INPUT_STATE) + INPUT
    OUTPUT       = READY != 0 ? acc : 0
    OUTPUT_STATE = READY != 0 ? acc : INPUT_STATE
so the onnxruntime backend of a real server runs the same semantics as the python models.
"""

from __future__ import annotations

from pathlib import Path

from .spec import (
    CONTROL_READY,
    CONTROL_START,
    IDENTITY_INPUT,
    IDENTITY_OUTPUT,
    SEQUENCE_INPUT,
    SEQUENCE_OUTPUT,
    STATE_INPUT,
    STATE_OUTPUT,
    ModelSpec,
)

OPSET = 17
IR_VERSION = 8  # readable by the onnxruntime of Triton releases from 2023 on


def _require_onnx(spec: ModelSpec):
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(f"{spec.name} needs the 'onnx' package: pip install 'triton-endurance[onnx]'") from exc
    return onnx


def _shape(spec: ModelSpec, dims: tuple[int, ...]) -> list[int | str]:
    named = ["n" if d < 0 else d for d in dims]
    return (["batch"] + named) if spec.max_batch_size > 0 else named


def export_onnx_model(spec: ModelSpec, version_dir: Path) -> Path:
    """Write `version_dir/model.onnx` for an identity or sequence spec; returns the path."""
    onnx = _require_onnx(spec)
    from onnx import TensorProto, helper

    if spec.kind == "identity":
        value = helper.make_tensor_value_info
        graph = helper.make_graph(
            [helper.make_node("Identity", [IDENTITY_INPUT], [IDENTITY_OUTPUT])], spec.name,
            [value(IDENTITY_INPUT, TensorProto.FLOAT, _shape(spec, spec.inputs[0].dims))],
            [value(IDENTITY_OUTPUT, TensorProto.FLOAT, _shape(spec, spec.outputs[0].dims))],
        )
    elif spec.kind == "sequence":
        graph = _accumulator_graph(spec, helper, TensorProto)
    else:
        raise ValueError(f"no ONNX export for kind {spec.kind!r} ({spec.name})")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="model_repo_gen")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path = Path(version_dir) / "model.onnx"
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path


def _accumulator_graph(spec: ModelSpec, helper, TensorProto):
    shape = _shape(spec, (1,))
    names = (SEQUENCE_INPUT, CONTROL_START, CONTROL_READY, STATE_INPUT)
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT32, shape) for n in names]
    outputs = [helper.make_tensor_value_info(n, TensorProto.INT32, shape) for n in (SEQUENCE_OUTPUT, STATE_OUTPUT)]
    zero = helper.make_tensor("zero", TensorProto.INT32, [], [0])
    nodes = [
        helper.make_node("Cast", [CONTROL_START], ["start"], to=TensorProto.BOOL),
        helper.make_node("Cast", [CONTROL_READY], ["ready"], to=TensorProto.BOOL),
        helper.make_node("Where", ["start", "zero", STATE_INPUT], ["base"]),
        helper.make_node("Add", ["base", SEQUENCE_INPUT], ["acc"]),
        helper.make_node("Where", ["ready", "acc", "zero"], [SEQUENCE_OUTPUT]),
        helper.make_node("Where", ["ready", "acc", STATE_INPUT], [STATE_OUTPUT]),
    ]
    return helper.make_graph(nodes, spec.name, inputs, outputs, initializer=[zero])
