"""What a generated model is and how it must answer: the contract between the generator,
the workers that drive a model, and the probes that validate it.

Semantics, by `ModelSpec.kind` (tensor names are fixed by the constants below):

- ``identity``: OUTPUT0 == INPUT0 (any shape the dims allow; BYTES round-trip exactly).
- ``zero``: OUTPUT0 == zeros_like(INPUT0), answered after `execute_delay_ms`.
- ``sequence``: OUTPUT == running sum of INPUT since the request that carried START, in the
  tensor's own dtype (an FP32 model adds in float32, step by step). A request with READY == 0
  (the Direct batcher's filler) gets zeros and changes nothing.
- ``decoupled``: one request (IN, N) gets N responses with OUT == IN + i for i = 0..N-1, in
  order, then a final empty response; N < 0 gets an error response.
- faulty kinds (``leak``, ``hang``, ``drift``, ``wrong``, ``crash``, ``plateau``, ``ratchet``,
  ``deadlock``, ``queue_drift``, ``compute_drift``, ``fd_leak``) answer as ``identity`` except for
  their fault (``queue_drift`` only in its configuration: one instance, one request at a time, a
  fixed service time); ``sequence`` with ``expires_state=False`` is the state-leaking sequence
  model, and ``sequence`` with the parameter ``fault = "hang"`` (sequence_hang_int32, no batching)
  answers as ``sequence`` until one instance blocks forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Tensor names, shared by every generated model of a kind.
IDENTITY_INPUT = "INPUT0"
IDENTITY_OUTPUT = "OUTPUT0"
SEQUENCE_INPUT = "INPUT"
SEQUENCE_OUTPUT = "OUTPUT"
DECOUPLED_VALUE_INPUT = "IN"
DECOUPLED_COUNT_INPUT = "N"
DECOUPLED_OUTPUT = "OUT"

# Sequence batcher control inputs (INT32 0/1 flags; CORRID UINT64) and implicit state tensors.
CONTROL_START = "START"
CONTROL_END = "END"
CONTROL_READY = "READY"
CONTROL_CORRID = "CORRID"
STATE_INPUT = "INPUT_STATE"
STATE_OUTPUT = "OUTPUT_STATE"

# Identity models with a deliberate fault: they answer like identity models (until the fault bites).
FAULT_KINDS = ("leak", "hang", "drift", "wrong", "crash", "plateau", "ratchet", "deadlock", "queue_drift",
               "compute_drift", "fd_leak")
KINDS = ("identity", "zero", "sequence", "decoupled", *FAULT_KINDS)
BACKENDS = ("python", "onnxruntime", "pytorch")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor a client sends or receives. `dims` exclude the batch dimension; -1 is variable."""

    name: str
    datatype: str  # Triton datatype: "FP32", "INT32", "BYTES", "UINT64"
    dims: tuple[int, ...]


@dataclass(frozen=True)
class SequenceSpec:
    """How a sequence model is batched and how it identifies sequences."""

    strategy: str  # "direct" or "oldest"
    idle_timeout_s: float  # max_sequence_idle_microseconds / 1e6
    # "UINT64" or "STRING": the ids clients send. With "STRING" the model has no CORRID control
    # input (a STRING CORRID control fails every request on Triton 2.51); it reads
    # request.correlation_id() instead.
    correlation_id_type: str
    control_inputs: tuple[str, ...]  # which of START/END/READY/CORRID the config declares
    implicit_state: bool = False  # ONNX/TorchScript accumulators keep the sum in Triton's implicit state
    expires_state: bool = True  # python models drop a sequence's state once it idled out


@dataclass(frozen=True)
class ModelSpec:
    """A generated model: its Triton config in value form, plus the semantics it promises."""

    name: str
    kind: str  # one of KINDS
    backend: str  # one of BACKENDS
    max_batch_size: int  # 0: no batching (dims are the full shape)
    inputs: tuple[TensorSpec, ...]  # what clients send (control inputs excluded)
    outputs: tuple[TensorSpec, ...]
    instance_count: int
    instance_kind: str  # "cpu", "gpu" or "auto"
    execute_delay_ms: float = 0.0
    dynamic_batching: bool = False
    sequence: SequenceSpec | None = None
    decoupled: bool = False
    # Extra string parameters written into config.pbtxt `parameters` (fault knobs and the like).
    parameters: tuple[tuple[str, str], ...] = field(default=())

    @property
    def is_sequence(self) -> bool:
        return self.sequence is not None

    def parameter(self, key: str, default: str = "") -> str:
        return dict(self.parameters).get(key, default)
