"""The knobs of a generated model repository, as one frozen value.

The same dataclass is the `[models]` section of the engine's config: `engine.config` reads it
generically, so every field carries its validation in `metadata`:

- ``help``: one line that says what the key does (shown in errors and docs);
- ``min`` / ``max``: inclusive numeric bounds; ``min_exclusive`` for "> 0";
- ``choices``: the allowed values (for a tuple field: of each item);
- ``unit``: ``"duration"`` means the value is seconds and the config may write "7s", "2m", "500ms".
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The generated models, by name. Every name here is produced by `model_repo_gen.catalog`.
IDENTITY_MODELS: tuple[str, ...] = (
    "identity_fp32",
    "identity_int32",
    "identity_bytes",
    "identity_nobatch_fp32",
    "identity_nobatch_int32",
    "identity_nobatch_bytes",
)
ZERO_MODELS: tuple[str, ...] = ("zero_fp32", "zero_slow_fp32")
SEQUENCE_MODELS: tuple[str, ...] = (
    "sequence_int32",
    "sequence_fp32",
    "sequence_nobatch_int32",
    "sequence_nobatch_fp32",
    "sequence_string_int32",
)
STREAMING_MODELS: tuple[str, ...] = ("decoupled_int32",)
HEALTHY_MODELS: tuple[str, ...] = IDENTITY_MODELS + ZERO_MODELS + SEQUENCE_MODELS + STREAMING_MODELS

# Deliberately faulty models: positive controls for the detectors. `plateau_fp32` is the
# negative control (memory that grows, then stops: must never be called a leak), and the one
# `ratchet_fp32` is judged against (memory that frees part of what it takes: still a leak).
FAULTY_MODELS: tuple[str, ...] = (
    "leak_fp32",
    "hang_fp32",
    "drift_fp32",
    "wrong_fp32",
    "crash_fp32",
    "sequence_noexpire_int32",
    "sequence_hang_int32",
    "plateau_fp32",
    "ratchet_fp32",
    "deadlock_fp32",
    "queue_drift_fp32",
    "compute_drift_fp32",
    "fd_leak_fp32",
)

# ONNX and TorchScript variants: written only when `onnx` / `torch` are importable. The server
# bundled with nvidia-pytriton cannot load them (python backend only); real servers can.
ONNX_MODELS: tuple[str, ...] = ("onnx_identity_fp32", "onnx_sequence_int32")
TORCH_MODELS: tuple[str, ...] = ("libtorch_identity_fp32", "libtorch_sequence_int32")

ALL_MODELS: tuple[str, ...] = HEALTHY_MODELS + FAULTY_MODELS + ONNX_MODELS + TORCH_MODELS

# What Triton's own long-running stress suite loads (sequence batched and nobatch, the 1 s and
# 10 s zero models), plus what the engine's other scenarios drive.
DEFAULT_MODELS: tuple[str, ...] = (
    "identity_fp32",
    "identity_bytes",
    "zero_fp32",
    "zero_slow_fp32",
    "sequence_int32",
    "sequence_nobatch_int32",
    "sequence_string_int32",
    "decoupled_int32",
)


@dataclass(frozen=True)
class FaultOptions:
    """Parameters of the deliberately faulty models (used only for the ones generated)."""

    leak_bytes_per_request: int = field(
        default=65536, metadata={"min": 1, "help": "bytes leak_fp32 keeps forever per request"}
    )
    hang_after_requests: int = field(
        default=200, metadata={"min": 1, "help": "requests the hanging instance of hang_fp32 and sequence_hang_int32 "
                                    "serves before it blocks"}
    )
    hang_instance: int = field(
        default=0, metadata={"min": 0, "help": "index of the instance of hang_fp32 and sequence_hang_int32 that blocks "
                                    "(the others go on)"}
    )
    drift_ms_per_minute: float = field(
        default=10.0, metadata={"min_exclusive": 0, "help": "latency drift_fp32 adds per minute since its onset"}
    )
    drift_onset: float = field(
        default=0.0, metadata={"min": 0, "unit": "duration", "help": "time after load before drift_fp32 drifts"}
    )
    wrong_every: int = field(
        default=50, metadata={"min": 1, "help": "wrong_fp32 answers every Nth request wrongly"}
    )
    crash_after_requests: int = field(
        default=200, metadata={"min": 1, "help": "requests a crash_fp32 stub serves before it exits"}
    )
    plateau_bytes: int = field(
        default=64 << 20, metadata={"min": 1, "help": "bytes plateau_fp32's cache fills up to"}
    )
    plateau_time_constant: float = field(
        default=60.0,
        metadata={"min_exclusive": 0, "unit": "duration", "help": "time constant of plateau_fp32's cache filling"},
    )
    ratchet_bytes_per_request: int = field(
        default=65536, metadata={"min": 1, "help": "bytes ratchet_fp32 takes per request"}
    )
    ratchet_period: float = field(
        default=10.0, metadata={"min_exclusive": 0, "unit": "duration",
                                "help": "how often ratchet_fp32 frees part of what it took since its last free"}
    )
    ratchet_free_fraction: float = field(
        default=0.5, metadata={"min": 0, "max": 0.95, "help": "share of what ratchet_fp32 took in a period that "
                                                              "it frees at the period's end"}
    )
    deadlock_after_requests: int = field(
        default=200, metadata={"min": 1, "help": "requests each instance of deadlock_fp32 serves before it "
                                                 "deadlocks (every instance does)"}
    )
    queue_drift_service_ms: float = field(
        default=50.0, metadata={"min_exclusive": 0, "help": "time queue_drift_fp32 (one instance, one request at "
                                                           "a time) takes per request: its capacity is "
                                                           "1000 / this requests per second"}
    )
    compute_drift_base_ms: float = field(
        default=20.0, metadata={"min": 0, "help": "execute time of compute_drift_fp32 before its onset"}
    )
    compute_drift_ms_per_minute: float = field(
        default=10.0, metadata={"min_exclusive": 0, "help": "execute time compute_drift_fp32 adds per minute "
                                                            "since its onset"}
    )
    fd_leak_every: int = field(
        default=10, metadata={"min": 1, "help": "fd_leak_fp32 opens one file descriptor per this many requests "
                                                "and never closes it"}
    )
    compute_drift_onset: float = field(
        default=0.0, metadata={"min": 0, "unit": "duration", "help": "time after load before compute_drift_fp32 "
                                                                     "drifts"}
    )


@dataclass(frozen=True)
class RepoOptions:
    """Which models to generate and the configuration knobs stress runs turn."""

    models: tuple[str, ...] = field(
        default=DEFAULT_MODELS, metadata={"choices": ALL_MODELS, "help": "names of the models to generate"}
    )
    instance_count: int = field(default=2, metadata={"min": 1, "max": 64, "help": "instances per model"})
    instance_kind: str = field(
        default="cpu", metadata={"choices": ("cpu", "gpu", "auto"), "help": "instance_group kind"}
    )
    max_batch_size: int = field(
        default=8, metadata={"min": 1, "max": 1024, "help": "max_batch_size of the batching stateless models"}
    )
    dynamic_batching: bool = field(default=True, metadata={"help": "dynamic batching on the batching stateless models"})
    sequence_max_batch_size: int = field(
        default=2, metadata={"min": 1, "max": 1024, "help": "max_batch_size of the batched sequence models"}
    )
    sequence_strategy: str = field(
        default="direct", metadata={"choices": ("direct", "oldest"), "help": "sequence batcher strategy"}
    )
    sequence_idle_timeout: float = field(
        default=7.0,
        metadata={
            "min_exclusive": 0,
            "unit": "duration",
            "help": "max_sequence_idle_microseconds of the sequence models",
        },
    )
    execute_delay_ms: float = field(
        default=0.0, metadata={"min": 0, "help": "execute delay of the identity and sequence models"}
    )
    zero_delay_ms: float = field(default=1000.0, metadata={"min": 0, "help": "execute delay of zero_fp32"})
    slow_zero_delay_ms: float = field(default=10000.0, metadata={"min": 0, "help": "execute delay of zero_slow_fp32"})
    faults: FaultOptions = field(default_factory=FaultOptions)
