"""A CUDA device buffer shared with the server through a CUDA IPC handle (cuda-python).

The server opens the handle and reads inputs from / writes outputs to device memory directly;
the client copies host data in and out with cudaMemcpy (reading an output is a copy).
"""

from __future__ import annotations

import base64
import ctypes

import numpy as np
from tritonclient.utils import deserialize_bytes_tensor

from ._errors import CudaError, CudaUnavailable
from ._system import tensor_bytes
from .gpu import gpu_count, gpu_unavailable_reason


def _runtime():
    try:
        from cuda.bindings import runtime
    except ImportError as exc:
        raise CudaUnavailable(f"cuda-python is not importable: {exc}") from exc
    return runtime


def _check(runtime, result, what: str):
    """cuda-python returns (error, value...) tuples; raise on an error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != runtime.cudaError_t.cudaSuccess:
        _, text = runtime.cudaGetErrorString(err)
        raise CudaError(f"{what} failed: {err.name}: {text.decode() if isinstance(text, bytes) else text}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class CudaRegion:
    def __init__(self, name: str, byte_size: int, device_id: int = 0) -> None:
        if gpu_count() == 0:
            raise CudaUnavailable(f"CUDA shared memory needs a GPU: {gpu_unavailable_reason()}")
        if byte_size <= 0:
            raise ValueError(f"region {name}: size must be positive, got {byte_size}")
        self.name = name
        self.byte_size = byte_size
        self.device_id = device_id
        self._rt = _runtime()
        _check(self._rt, self._rt.cudaSetDevice(device_id), f"cudaSetDevice({device_id})")
        self._ptr: int | None = int(_check(self._rt, self._rt.cudaMalloc(byte_size), f"cudaMalloc({byte_size})"))
        try:
            handle = _check(self._rt, self._rt.cudaIpcGetMemHandle(self._ptr), "cudaIpcGetMemHandle")
            size = self._rt.CUDA_IPC_HANDLE_SIZE
            # cuda-bindings 13 exposes the handle's bytes only through its address.
            self._raw_handle = bytes((ctypes.c_char * size).from_address(handle.getPtr()))
        except BaseException:
            self.close()
            raise

    @property
    def raw_handle_b64(self) -> bytes:
        """The IPC handle, base64-encoded: what both tritonclient clients' register call takes."""
        return base64.b64encode(self._raw_handle)

    def _device_ptr(self) -> int:
        if self._ptr is None:
            raise ValueError(f"CUDA region {self.name} is closed")
        return self._ptr

    def write(self, offset: int, array: np.ndarray) -> int:
        raw = tensor_bytes(array)
        if offset < 0 or offset + len(raw) > self.byte_size:
            raise ValueError(f"region {self.name}: {len(raw)} bytes at offset {offset} do not fit {self.byte_size}")
        host = np.frombuffer(raw, dtype=np.uint8)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(self._rt, self._rt.cudaMemcpy(self._device_ptr() + offset, host.ctypes.data, len(raw), kind),
               "cudaMemcpy host to device")
        return len(raw)

    def read(self, offset: int, dtype: np.dtype | type, shape: tuple[int, ...]) -> np.ndarray:
        """Copy a tensor out of device memory into a new host array."""
        dtype = np.dtype(dtype)
        out = np.empty(shape, dtype=dtype)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(self._rt, self._rt.cudaMemcpy(out.ctypes.data, self._device_ptr() + offset, out.nbytes, kind),
               "cudaMemcpy device to host")
        return out

    def read_bytes_tensor(self, offset: int, byte_size: int, shape: tuple[int, ...]) -> np.ndarray:
        raw = self.read(offset, np.uint8, (byte_size,))
        return deserialize_bytes_tensor(raw.tobytes()).reshape(shape)

    def close(self) -> None:
        """Free the device memory. Idempotent."""
        if self._ptr is not None:
            ptr, self._ptr = self._ptr, None
            _check(self._rt, self._rt.cudaFree(ptr), "cudaFree")

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def __enter__(self) -> "CudaRegion":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
