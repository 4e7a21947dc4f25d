"""Generate Triton model repositories for stress runs: healthy models, faulty ones, and the
knobs stress runs turn. `generate_repository(out_dir, RepoOptions(...))` is the whole API."""

from .catalog import build_spec, build_specs
from .options import (
    ALL_MODELS,
    DEFAULT_MODELS,
    FAULTY_MODELS,
    HEALTHY_MODELS,
    ONNX_MODELS,
    TORCH_MODELS,
    FaultOptions,
    RepoOptions,
)
from .pbtxt import render_config
from .spec import ModelSpec, SequenceSpec, TensorSpec
from .writer import generate_repository

__all__ = [
    "ALL_MODELS",
    "DEFAULT_MODELS",
    "FAULTY_MODELS",
    "HEALTHY_MODELS",
    "ONNX_MODELS",
    "TORCH_MODELS",
    "FaultOptions",
    "ModelSpec",
    "RepoOptions",
    "SequenceSpec",
    "TensorSpec",
    "build_spec",
    "build_specs",
    "generate_repository",
    "render_config",
]
