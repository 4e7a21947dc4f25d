"""Is there a usable CUDA device? Asked once by config validation and by the CUDA shm code."""

from __future__ import annotations


def gpu_count() -> int:
    """Number of CUDA devices this process can use; 0 when cuda-python, the driver or a GPU is missing.

    `cudaGetDeviceCount` returns an error code (35, insufficient driver, on a machine with no
    driver) rather than raising; the driver API raises `RuntimeError` subclasses when the driver
    library cannot be found. Both mean "no GPU".
    """
    try:
        from cuda.bindings import runtime
    except ImportError:
        return 0
    try:
        err, count = runtime.cudaGetDeviceCount()
    except RuntimeError:
        return 0
    return int(count) if err == runtime.cudaError_t.cudaSuccess else 0


def gpu_unavailable_reason() -> str:
    """Why no GPU can be used, in one line (empty when one can)."""
    try:
        from cuda.bindings import runtime
    except ImportError as exc:
        return f"cuda-python is not importable: {exc}"
    try:
        err, count = runtime.cudaGetDeviceCount()
    except RuntimeError as exc:
        return f"CUDA runtime failed: {exc}"
    if err != runtime.cudaError_t.cudaSuccess:
        _, text = runtime.cudaGetErrorString(err)
        return f"no usable CUDA device: {err.name} ({text.decode() if isinstance(text, bytes) else text})"
    return "" if count else "no CUDA device found"
