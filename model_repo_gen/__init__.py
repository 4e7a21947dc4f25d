"""Generate Triton model repositories for stress runs: healthy models, faulty ones, and the
knobs stress runs turn. `generate_repository(out_dir, RepoOptions(...))` is the whole API;
`build_specs` and `render_config` give the same models as values and config text."""

from .catalog import build_spec, build_specs
from .options import (
    ALL_MODELS,
    DEFAULT_MODELS,
    FAULTY_MODELS,
    HEALTHY_MODELS,
    IDENTITY_MODELS,
    ONNX_MODELS,
    SEQUENCE_MODELS,
    STREAMING_MODELS,
    TORCH_MODELS,
    ZERO_MODELS,
    FaultOptions,
    RepoOptions,
)
from .pbtxt import render_config
from .spec import ModelSpec, SequenceSpec, TensorSpec
from .validate import OptionError
from .writer import generate_repository

__all__ = [
    "ALL_MODELS",
    "DEFAULT_MODELS",
    "FAULTY_MODELS",
    "HEALTHY_MODELS",
    "IDENTITY_MODELS",
    "ONNX_MODELS",
    "SEQUENCE_MODELS",
    "STREAMING_MODELS",
    "TORCH_MODELS",
    "ZERO_MODELS",
    "FaultOptions",
    "ModelSpec",
    "OptionError",
    "RepoOptions",
    "SequenceSpec",
    "TensorSpec",
    "build_spec",
    "build_specs",
    "generate_repository",
    "render_config",
]
