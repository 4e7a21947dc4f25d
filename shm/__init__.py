"""System and CUDA shared memory for Triton inputs and outputs."""

from .gpu import gpu_count, gpu_unavailable_reason

__all__ = ["gpu_count", "gpu_unavailable_reason"]
