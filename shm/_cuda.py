"""A CUDA device buffer shared with the server through a CUDA IPC handle (cuda-python).

The server opens the handle and reads inputs from, and writes outputs to, device memory directly.
This process copies host data in (cudaMemcpy host to device) and answers out (device to host):
reading an output is a copy, unlike the system regions' views.

cuda-python's runtime calls return `(cudaError_t, value...)` tuples and do not raise; every call
here goes through `check()`, which raises CudaError with cudaGetErrorString's text.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from ._errors import CudaError, CudaUnavailable
from ._system import as_byte_array, decode_bytes_tensor, is_bytes_dtype, tensor_bytes
from .gpu import gpu_count, gpu_unavailable_reason

KIND = "cuda"


def _runtime() -> Any:
    try:
        from cuda.bindings import runtime
    except ImportError as exc:
        raise CudaUnavailable(f"cuda-python is not importable: {exc}") from exc
    return runtime


def check(result: Any, what: str) -> Any:
    """The value(s) of a cuda-python runtime call, or CudaError naming the call and the error."""
    runtime = _runtime()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != runtime.cudaError_t.cudaSuccess:
        _, text = runtime.cudaGetErrorString(err)
        text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
        raise CudaError(f"{what} failed: {getattr(err, 'name', err)} ({int(err)}): {text}", code=int(err))
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def ipc_handle_bytes(handle: Any) -> bytes:
    """The raw bytes of a cudaIpcMemHandle_t (what cudaIpcOpenMemHandle takes in the server)."""
    runtime = _runtime()
    get_ptr = getattr(handle, "getPtr", None)
    if get_ptr is not None:  # cuda-bindings >= 13: the struct's bytes only through its address
        return bytes((ctypes.c_char * runtime.CUDA_IPC_HANDLE_SIZE).from_address(get_ptr()))
    return bytes(handle.reserved)  # cuda-python 12


class CudaRegion:
    """`byte_size` bytes of device memory on `device_id`, with the IPC handle the server needs.

    Raises CudaUnavailable (with the reason) when there is no usable GPU. close() frees the
    memory; it is idempotent. Unregister the region from the server before closing it.
    """

    kind = KIND

    def __init__(self, name: str, byte_size: int, device_id: int = 0) -> None:
        if byte_size <= 0:
            raise ValueError(f"region {name}: size must be positive, got {byte_size}")
        devices = gpu_count()
        if devices == 0:
            raise CudaUnavailable(f"cannot create CUDA region {name!r}: {gpu_unavailable_reason() or 'no CUDA device'}")
        if not 0 <= device_id < devices:
            raise CudaUnavailable(f"cannot create CUDA region {name!r}: no device {device_id} ({devices} present)")
        self.name = name
        self.byte_size = byte_size
        self.device_id = device_id
        self._rt = _runtime()
        self._ptr: int | None = None
        previous = check(self._rt.cudaGetDevice(), "cudaGetDevice")
        check(self._rt.cudaSetDevice(device_id), f"cudaSetDevice({device_id})")
        try:
            self._ptr = int(check(self._rt.cudaMalloc(byte_size), f"cudaMalloc({byte_size})"))
            handle = check(self._rt.cudaIpcGetMemHandle(self._ptr), "cudaIpcGetMemHandle")
            self.raw_handle: bytes = ipc_handle_bytes(handle)
        except BaseException:
            self.close()
            raise
        finally:
            # Leave the caller's current device as it was: with unified addressing the copies
            # find the device from the pointer, whatever device is current.
            self._rt.cudaSetDevice(previous)

    @property
    def size(self) -> int:
        return self.byte_size

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def _address(self, offset: int, nbytes: int) -> int:
        if self._ptr is None:
            raise ValueError(f"CUDA region {self.name} is closed")
        if offset < 0 or nbytes < 0 or offset + nbytes > self.byte_size:
            raise ValueError(f"region {self.name}: {nbytes} bytes at offset {offset} do not fit {self.byte_size}")
        return self._ptr + offset

    def write(self, offset: int, array: np.ndarray) -> int:
        """Copy `array` to the device at `offset` (BYTES serialized); returns the bytes written."""
        return self.write_raw(offset, tensor_bytes(np.asarray(array)))

    def write_raw(self, offset: int, data: bytes | bytearray | memoryview | np.ndarray) -> int:
        raw = as_byte_array(data)
        address = self._address(offset, raw.size)
        if raw.size:
            check(self._rt.cudaMemcpy(address, raw.ctypes.data, raw.size,
                                      self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice),
                  f"cudaMemcpy host to device ({raw.size} bytes into {self.name} at {offset})")
        return raw.size

    def fill(self, offset: int, nbytes: int, value: int = 0) -> None:
        address = self._address(offset, nbytes)
        if not nbytes:
            return
        previous = check(self._rt.cudaGetDevice(), "cudaGetDevice")
        check(self._rt.cudaSetDevice(self.device_id), f"cudaSetDevice({self.device_id})")
        try:
            check(self._rt.cudaMemset(address, value, nbytes), f"cudaMemset ({nbytes} bytes of {self.name})")
            check(self._rt.cudaDeviceSynchronize(), "cudaDeviceSynchronize after cudaMemset")
        finally:
            self._rt.cudaSetDevice(previous)

    def read(self, offset: int, dtype: np.dtype | type | str, shape: tuple[int, ...] | list[int],
             out: np.ndarray | None = None) -> np.ndarray:
        """Copy a tensor from the device into a host array (`out` when given: no allocation)."""
        dtype = np.dtype(dtype)
        if is_bytes_dtype(dtype):
            raise TypeError("BYTES tensors are serialized; read them with read_bytes()")
        shape = tuple(int(d) for d in shape)
        if out is None:
            out = np.empty(shape, dtype=dtype)
        elif out.dtype != dtype or out.shape != shape or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {dtype} array of shape {shape}")
        self.read_raw(offset, out.reshape(-1).view(np.uint8))
        return out

    def read_raw(self, offset: int, out: np.ndarray) -> np.ndarray:
        """Copy `out.nbytes` bytes from `offset` into the contiguous host array `out`."""
        address = self._address(offset, out.nbytes)
        if out.nbytes:
            check(self._rt.cudaMemcpy(out.ctypes.data, address, out.nbytes,
                                      self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost),
                  f"cudaMemcpy device to host ({out.nbytes} bytes from {self.name} at {offset})")
        return out

    def read_bytes(self, offset: int, shape: tuple[int, ...] | list[int], byte_size: int | None = None) -> np.ndarray:
        """A BYTES tensor copied from the device and decoded."""
        limit = self.byte_size - offset if byte_size is None else byte_size
        host = self.read_raw(offset, np.empty(limit, np.uint8))
        return decode_bytes_tensor(host, tuple(int(d) for d in shape))

    def close(self) -> None:
        """Free the device memory. Idempotent."""
        if self._ptr is None:
            return
        pointer, self._ptr = self._ptr, None
        check(self._rt.cudaFree(pointer), f"cudaFree ({self.name})")

    def __enter__(self) -> CudaRegion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"CudaRegion({self.name!r}, {self.byte_size}, device {self.device_id}, {state})"
