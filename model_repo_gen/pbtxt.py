"""config.pbtxt text for a ModelSpec. Configs are complete: the engine starts servers with
--disable-auto-complete-config (auto-complete would start an extra stub per model)."""

from __future__ import annotations

from .spec import (
    CONTROL_CORRID,
    CONTROL_END,
    CONTROL_READY,
    CONTROL_START,
    STATE_INPUT,
    STATE_OUTPUT,
    ModelSpec,
    TensorSpec,
)

_TYPE = {"FP32": "TYPE_FP32", "INT32": "TYPE_INT32", "BYTES": "TYPE_STRING", "UINT64": "TYPE_UINT64"}
_KIND = {"cpu": "KIND_CPU", "gpu": "KIND_GPU", "auto": "KIND_AUTO"}
_PLATFORM = {"onnxruntime": 'platform: "onnxruntime_onnx"', "pytorch": 'platform: "pytorch_libtorch"'}
_CONTROL_KIND = {CONTROL_START: "CONTROL_SEQUENCE_START", CONTROL_END: "CONTROL_SEQUENCE_END",
                 CONTROL_READY: "CONTROL_SEQUENCE_READY", CONTROL_CORRID: "CONTROL_SEQUENCE_CORRID"}
FAULT_KINDS = ("leak", "hang", "drift", "wrong", "crash", "plateau")


def _tensor(t: TensorSpec) -> str:
    dims = ", ".join(str(d) for d in t.dims)
    return f'{{ name: "{t.name}" data_type: {_TYPE[t.datatype]} dims: [ {dims} ] }}'


def _tensors(section: str, tensors: tuple[TensorSpec, ...]) -> str:
    body = ",\n".join(f"  {_tensor(t)}" for t in tensors)
    return f"{section} [\n{body}\n]"


def python_parameters(spec: ModelSpec) -> list[tuple[str, str]]:
    """What a generated python model reads from its config, on top of spec.parameters."""
    params = [("execute_delay_ms", f"{spec.execute_delay_ms:g}")]
    if spec.kind == "zero":
        params.append(("mode", "zero"))
    if spec.kind in FAULT_KINDS:
        params.append(("fault", spec.kind))
    return params + list(spec.parameters)


def _control(name: str) -> str:
    if name == CONTROL_CORRID:
        return f'{{ name: "{name}" control [ {{ kind: {_CONTROL_KIND[name]} data_type: TYPE_UINT64 }} ] }}'
    return f'{{ name: "{name}" control [ {{ kind: {_CONTROL_KIND[name]} int32_false_true: [ 0, 1 ] }} ] }}'


def _sequence_batching(spec: ModelSpec) -> str:
    seq = spec.sequence
    assert seq is not None
    lines = [f"  max_sequence_idle_microseconds: {round(seq.idle_timeout_s * 1_000_000)}"]
    if spec.max_batch_size > 0:
        if seq.strategy == "oldest":
            lines.append(
                f"  oldest {{ max_candidate_sequences: {4 * spec.max_batch_size} "
                f"max_queue_delay_microseconds: 5000 preferred_batch_size: [ {spec.max_batch_size} ] }}"
            )
        else:
            lines.append("  direct { }")
    controls = ",\n".join(f"    {_control(c)}" for c in seq.control_inputs)
    lines.append(f"  control_input [\n{controls}\n  ]")
    if seq.implicit_state:
        dtype = _TYPE[spec.inputs[0].datatype]
        lines.append(
            f'  state [ {{ input_name: "{STATE_INPUT}" output_name: "{STATE_OUTPUT}" data_type: {dtype} dims: [ 1 ] '
            f'initial_state {{ data_type: {dtype} dims: [ 1 ] zero_data: true name: "zero" }} }} ]'
        )
    return "sequence_batching {\n" + "\n".join(lines) + "\n}"


def render_config(spec: ModelSpec) -> str:
    parts = [f'name: "{spec.name}"']
    parts.append(_PLATFORM.get(spec.backend, f'backend: "{spec.backend}"'))
    parts.append(f"max_batch_size: {spec.max_batch_size}")
    parts.append(_tensors("input", spec.inputs))
    parts.append(_tensors("output", spec.outputs))
    parts.append(f"instance_group [ {{ count: {spec.instance_count} kind: {_KIND[spec.instance_kind]} }} ]")
    if spec.dynamic_batching and spec.max_batch_size > 0 and not spec.is_sequence:
        parts.append("dynamic_batching { }")
    if spec.is_sequence:
        parts.append(_sequence_batching(spec))
    if spec.decoupled:
        parts.append("model_transaction_policy { decoupled: true }")
    params = python_parameters(spec) if spec.backend == "python" else list(spec.parameters)
    for key, value in params:
        parts.append(f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}')
    return "\n".join(parts) + "\n"
