"""TorchScript model files of the generated identity and sequence-accumulator models.

forward() argument names are the Triton input names, so the libtorch backend maps inputs by
name; the accumulator returns (OUTPUT, OUTPUT_STATE) in that order, the order its config lists
them. Semantics as in onnx_models: the running sum lives in Triton's implicit state.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .spec import ModelSpec


def _require_torch(spec: ModelSpec):
    try:
        import torch
    except ImportError as exc:
        raise ImportError(f"{spec.name} needs the 'torch' package: pip install 'triton-endurance[torch]'") from exc
    return torch


def export_torchscript_model(spec: ModelSpec, version_dir: Path) -> Path:
    """Write `version_dir/model.pt` for an identity or sequence spec; returns the path."""
    torch = _require_torch(spec)
    factories = {"identity": _identity_module, "sequence": _accumulator_module}
    if spec.kind not in factories:
        raise ValueError(f"no TorchScript export for kind {spec.kind!r} ({spec.name})")
    path = Path(version_dir) / "model.pt"
    # TorchScript is what Triton's libtorch backend loads, whatever newer torch says of it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(factories[spec.kind](torch)()), str(path))
    return path


def _identity_module(torch):
    class Identity(torch.nn.Module):
        def forward(self, INPUT0: torch.Tensor) -> torch.Tensor:  # noqa: N803 - Triton's tensor name
            return INPUT0

    return Identity


def _accumulator_module(torch):
    class Accumulator(torch.nn.Module):
        def forward(self, INPUT: torch.Tensor, START: torch.Tensor, READY: torch.Tensor,  # noqa: N803
                    INPUT_STATE: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            base = torch.where(START != 0, torch.zeros_like(INPUT_STATE), INPUT_STATE)
            acc = base + INPUT
            ready = READY != 0
            return torch.where(ready, acc, torch.zeros_like(acc)), torch.where(ready, acc, INPUT_STATE)

    return Accumulator
