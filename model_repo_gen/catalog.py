"""Every generated model by name: its ModelSpec, built from the repository options."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from .options import ALL_MODELS, FaultOptions, RepoOptions
from .pbtxt import FAULT_KINDS as PBTXT_FAULT_KINDS
from .spec import (
    CONTROL_CORRID,
    CONTROL_END,
    CONTROL_READY,
    CONTROL_START,
    DECOUPLED_COUNT_INPUT,
    DECOUPLED_OUTPUT,
    DECOUPLED_VALUE_INPUT,
    FAULT_KINDS,
    IDENTITY_INPUT,
    IDENTITY_OUTPUT,
    SEQUENCE_INPUT,
    SEQUENCE_OUTPUT,
    ModelSpec,
    SequenceSpec,
    TensorSpec,
)
from .validate import check_options

_DTYPES = {"fp32": "FP32", "int32": "INT32", "bytes": "BYTES"}
COMPUTE_DRIFT_INSTANCES = 4  # compute_drift_fp32's instances at least


def _identity_tensors(datatype: str) -> dict:
    return {"inputs": (TensorSpec(IDENTITY_INPUT, datatype, (-1,)),),
            "outputs": (TensorSpec(IDENTITY_OUTPUT, datatype, (-1,)),)}


def _instances(o: RepoOptions, at_least: int = 1) -> dict:
    return {"instance_count": max(at_least, o.instance_count), "instance_kind": o.instance_kind}


def _identity(datatype: str, batching: bool) -> Callable[[str, RepoOptions], ModelSpec]:
    def build(name: str, o: RepoOptions) -> ModelSpec:
        return ModelSpec(name=name, kind="identity", backend="python",
                         max_batch_size=o.max_batch_size if batching else 0,
                         dynamic_batching=batching and o.dynamic_batching, execute_delay_ms=o.execute_delay_ms,
                         **_identity_tensors(datatype), **_instances(o))
    return build


def _zero(slow: bool) -> Callable[[str, RepoOptions], ModelSpec]:
    def build(name: str, o: RepoOptions) -> ModelSpec:
        # nobatch, as the reference suite's zero models; the delay is the model's own sleep.
        return ModelSpec(name=name, kind="zero", backend="python", max_batch_size=0,
                         execute_delay_ms=o.slow_zero_delay_ms if slow else o.zero_delay_ms,
                         **_identity_tensors("FP32"), **_instances(o))
    return build


def _state_ttl(o: RepoOptions) -> str:
    # Twice the server's idle timeout plus 1 s of scheduling slack, so only sequences the server
    # has already dropped lose their state. A live sequence's requests can also wait in the queue
    # behind other executions, each as long as the execute delay: that wait is added on top.
    return f"{2 * o.sequence_idle_timeout + 1 + 2 * o.execute_delay_ms / 1000:g}"


def _sequence(datatype: str, batching: bool, *, string_ids: bool = False, expires: bool = True,
              backend: str = "python", hang: bool = False) -> Callable[[str, RepoOptions], ModelSpec]:
    def build(name: str, o: RepoOptions) -> ModelSpec:
        implicit = backend != "python"
        controls = (CONTROL_START, CONTROL_READY) if implicit else (CONTROL_START, CONTROL_END, CONTROL_READY)
        if not string_ids and not implicit:
            controls += (CONTROL_CORRID,)
        sequence = SequenceSpec(
            strategy=o.sequence_strategy, idle_timeout_s=o.sequence_idle_timeout,
            correlation_id_type="STRING" if string_ids else "UINT64", control_inputs=controls,
            implicit_state=implicit, expires_state=expires,
        )
        parameters: tuple[tuple[str, str], ...] = ()
        instances = _instances(o)
        if backend == "python":
            parameters = (("expire_state", "1" if expires else "0"), ("state_ttl_s", _state_ttl(o)))
        if hang:
            # One instance of two blocks forever while holding its slot: the sequence backlog then
            # drains through the other slots only, and the hung holder's requests never return.
            f = o.faults
            parameters += (("fault", "hang"), ("hang_after_requests", str(f.hang_after_requests)),
                           ("hang_instance", str(f.hang_instance)))
            instances = _instances(o, at_least=max(2, f.hang_instance + 1))
        return ModelSpec(
            name=name, kind="sequence", backend=backend, max_batch_size=o.sequence_max_batch_size if batching else 0,
            inputs=(TensorSpec(SEQUENCE_INPUT, datatype, (1,)),),
            outputs=(TensorSpec(SEQUENCE_OUTPUT, datatype, (1,)),),
            execute_delay_ms=o.execute_delay_ms if backend == "python" else 0.0, sequence=sequence,
            parameters=parameters, **instances,
        )
    return build


def _decoupled(name: str, o: RepoOptions) -> ModelSpec:
    return ModelSpec(
        name=name, kind="decoupled", backend="python", max_batch_size=0, decoupled=True,
        inputs=(TensorSpec(DECOUPLED_VALUE_INPUT, "INT32", (1,)), TensorSpec(DECOUPLED_COUNT_INPUT, "INT32", (1,))),
        outputs=(TensorSpec(DECOUPLED_OUTPUT, "INT32", (1,)),), execute_delay_ms=o.execute_delay_ms, **_instances(o),
    )


def _fault_knobs(kind: str, f: FaultOptions) -> dict[str, float | int]:
    """What the faulty model of `kind` reads from its config, by parameter name."""
    return {
        "leak": {"leak_bytes_per_request": f.leak_bytes_per_request},
        "hang": {"hang_after_requests": f.hang_after_requests, "hang_instance": f.hang_instance},
        "drift": {"drift_ms_per_minute": f.drift_ms_per_minute, "drift_onset_s": f.drift_onset},
        "wrong": {"wrong_every": f.wrong_every},
        "crash": {"crash_after_requests": f.crash_after_requests},
        "plateau": {"plateau_bytes": f.plateau_bytes, "plateau_time_constant_s": f.plateau_time_constant},
        "ratchet": {"ratchet_bytes_per_request": f.ratchet_bytes_per_request, "ratchet_period_s": f.ratchet_period,
                    "ratchet_free_fraction": f.ratchet_free_fraction},
        "deadlock": {"deadlock_after_requests": f.deadlock_after_requests},
        "queue_drift": {},
        "fd_leak": {"fd_leak_every": f.fd_leak_every},
        # The same growing sleep as drift_fp32, on top of a base execute time.
        "compute_drift": {"drift_ms_per_minute": f.compute_drift_ms_per_minute,
                          "drift_onset_s": f.compute_drift_onset},
    }[kind]


def _fault(kind: str) -> Callable[[str, RepoOptions], ModelSpec]:
    def build(name: str, o: RepoOptions) -> ModelSpec:
        f = o.faults
        parameters = tuple((k, f"{v:g}" if isinstance(v, float) else str(v)) for k, v in _fault_knobs(kind, f).items())
        if kind not in PBTXT_FAULT_KINDS:  # the config says which fault the model has; pbtxt names the older ones
            parameters = (("fault", kind), *parameters)
        shape: dict[str, Any] = {"max_batch_size": o.max_batch_size, "dynamic_batching": o.dynamic_batching,
                                 "execute_delay_ms": o.execute_delay_ms, **_instances(o)}
        if kind == "hang":
            # A hang on one instance of two is the case to catch: the other instance hides it from
            # anyone who only looks at the model as a whole.
            shape.update(_instances(o, at_least=max(2, f.hang_instance + 1)))
        elif kind == "queue_drift":
            # One instance serving one request at a time in a fixed time: a capacity that batching or a
            # second instance cannot stretch. An open-loop load above it queues up, in the server's
            # queue only, for as long as the load lasts; the time in compute stays what it was.
            shape.update(max_batch_size=0, dynamic_batching=False, execute_delay_ms=f.queue_drift_service_ms,
                         instance_count=1)
        elif kind == "compute_drift":
            # Instances to spare, so that the longer executions do not queue up at the load it is
            # meant to be seen under: the time it adds is the model's compute, not its queue.
            shape.update(execute_delay_ms=f.compute_drift_base_ms, **_instances(o, at_least=COMPUTE_DRIFT_INSTANCES))
        return ModelSpec(name=name, kind=kind, backend="python", parameters=parameters,
                         **_identity_tensors("FP32"), **shape)
    return build


def _onnx_identity(name: str, o: RepoOptions) -> ModelSpec:
    return ModelSpec(name=name, kind="identity", backend="onnxruntime", max_batch_size=o.max_batch_size,
                     dynamic_batching=o.dynamic_batching, **_identity_tensors("FP32"), **_instances(o))


def _torch_identity(name: str, o: RepoOptions) -> ModelSpec:
    return ModelSpec(name=name, kind="identity", backend="pytorch", max_batch_size=o.max_batch_size,
                     dynamic_batching=o.dynamic_batching, **_identity_tensors("FP32"), **_instances(o))


BUILDERS: dict[str, Callable[[str, RepoOptions], ModelSpec]] = {
    **{f"identity_{d}": _identity(t, True) for d, t in _DTYPES.items()},
    **{f"identity_nobatch_{d}": _identity(t, False) for d, t in _DTYPES.items()},
    "zero_fp32": _zero(slow=False),
    "zero_slow_fp32": _zero(slow=True),
    "sequence_int32": _sequence("INT32", True),
    "sequence_fp32": _sequence("FP32", True),
    "sequence_nobatch_int32": _sequence("INT32", False),
    "sequence_nobatch_fp32": _sequence("FP32", False),
    "sequence_string_int32": _sequence("INT32", True, string_ids=True),
    "decoupled_int32": _decoupled,
    **{f"{k}_fp32": _fault(k) for k in FAULT_KINDS},
    "sequence_noexpire_int32": _sequence("INT32", True, expires=False),
    "sequence_hang_int32": _sequence("INT32", False, hang=True),
    "onnx_identity_fp32": _onnx_identity,
    "onnx_sequence_int32": _sequence("INT32", True, backend="onnxruntime"),
    "libtorch_identity_fp32": _torch_identity,
    "libtorch_sequence_int32": _sequence("INT32", True, backend="pytorch"),
}
assert set(BUILDERS) == set(ALL_MODELS), "every model name in options.py has a builder"


def unknown_model_message(name: str) -> str:
    close = difflib.get_close_matches(name, list(BUILDERS), n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown model {name!r}{hint} (python -m model_repo_gen --list shows them all)"


def _build(name: str, options: RepoOptions) -> ModelSpec:
    try:
        builder = BUILDERS[name]
    except KeyError:
        raise ValueError(unknown_model_message(name)) from None
    return builder(name, options)


def build_spec(name: str, options: RepoOptions) -> ModelSpec:
    """The spec of one model; ValueError for an unknown name or an option out of its bounds."""
    check_options(options)
    return _build(name, options)


def build_specs(options: RepoOptions) -> tuple[ModelSpec, ...]:
    """The specs of `options.models`, in order, each name once; ValueError for an unknown name
    (with the closest known ones) or an option out of its bounds (naming the option)."""
    check_options(options)
    return tuple(_build(name, options) for name in dict.fromkeys(options.models))
