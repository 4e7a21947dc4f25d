"""A CUDA device buffer shared with the server through a CUDA IPC handle (cuda-python).

The server opens the handle and reads inputs from, and writes outputs to, device memory directly.
This process copies host data in (host to device) and answers out (device to host): reading an
output is a copy, unlike the system regions' views.

Every copy is complete when the call returns. The server, another process, reads the device
memory as soon as the request arrives, and a plain cudaMemcpy from pageable host memory (numpy
arrays) may return once the source is staged, before the DMA to the device has landed (CUDA
runtime docs, "API synchronization behavior"). So each copy runs on the region's own stream and
is followed by cudaStreamSynchronize on it. Copying through a pinned staging buffer instead was
weighed and not taken: the data comes from pageable numpy arrays, so our copy into the pinned
buffer would merely replace the driver's own staging copy (which it overlaps with the DMA);
and a buffer sized to the largest input would pin up to 1 GiB per worker (the timeout scenario's
input). The synchronize only waits for a copy the server needs finished anyway (a 4 MiB input:
well under a millisecond on PCIe 4), plus a few microseconds for the call.

Every runtime call is made with the region's device current. Making a device current creates its
primary context (CUDA 12: cudaSetDevice does), hundreds of MiB of that GPU's memory per process;
so the caller's device is put back afterwards only where this process already has a context on it
(PyTorch's device guard does the same): a worker with regions on device 1 holds nothing on device 0.

cuda-python's runtime calls return `(cudaError_t, value...)` tuples and do not raise; every call
here goes through `check()`, which raises CudaError with cudaGetErrorString's text.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
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


def _has_context(device: int) -> bool:
    """Whether this process has initialized `device`'s primary context (the runtime API cannot
    tell; the driver API can). True when that cannot be known: then the device is restored."""
    try:
        from cuda.bindings import driver

        err, _flags, active = driver.cuDevicePrimaryCtxGetState(driver.CUdevice(device))
    except Exception:  # noqa: BLE001 - no driver binding: fall back to restoring the device
        return True
    return err != driver.CUresult.CUDA_SUCCESS or bool(active)


@contextlib.contextmanager
def on_device(runtime: Any, device_id: int) -> Iterator[None]:
    """Make `device_id` current for the calls inside; afterwards, the caller's device again where
    this process has a context on it (else `device_id` stays current: restoring would create one)."""
    previous = check(runtime.cudaGetDevice(), "cudaGetDevice")
    if previous == device_id:
        yield
        return
    check(runtime.cudaSetDevice(device_id), f"cudaSetDevice({device_id})")
    try:
        yield
    finally:
        if _has_context(previous):
            runtime.cudaSetDevice(previous)


def ipc_handle_bytes(handle: Any) -> bytes:
    """The raw bytes of a cudaIpcMemHandle_t (what cudaIpcOpenMemHandle takes in the server)."""
    runtime = _runtime()
    get_ptr = getattr(handle, "getPtr", None)
    if get_ptr is not None:  # cuda-bindings >= 13: the struct's bytes only through its address
        return bytes((ctypes.c_char * runtime.CUDA_IPC_HANDLE_SIZE).from_address(get_ptr()))
    return bytes(handle.reserved)  # cuda-python 12


def require_device(device_id: int, what: str) -> None:
    """CudaUnavailable, its text starting with `what`, unless CUDA device `device_id` is there."""
    devices = gpu_count()
    if devices == 0:
        raise CudaUnavailable(f"{what}: {gpu_unavailable_reason() or 'no CUDA device'}")
    if not 0 <= device_id < devices:
        raise CudaUnavailable(f"{what}: no CUDA device {device_id} ({devices} present: 0 to {devices - 1})")


class CudaRegion:
    """`byte_size` bytes of device memory on `device_id`, with the IPC handle the server needs,
    and a stream of its own for the copies (each synchronized before it returns).

    Raises CudaUnavailable (with the reason) when there is no usable GPU or no device `device_id`.
    close() frees the memory and the stream; it is idempotent. Unregister the region from the
    server before closing it. Not thread-safe (one region, one stream).
    """

    kind = KIND

    def __init__(self, name: str, byte_size: int, device_id: int = 0) -> None:
        if byte_size <= 0:
            raise ValueError(f"region {name}: size must be positive, got {byte_size}")
        require_device(device_id, f"cannot create CUDA region {name!r}")
        self.name = name
        self.byte_size = byte_size
        self.device_id = device_id
        self._rt = _runtime()
        self._ptr: int | None = None
        self._stream: Any = None
        with on_device(self._rt, device_id):
            try:
                # Non-blocking: no implicit synchronization with the legacy default stream.
                self._stream = check(self._rt.cudaStreamCreateWithFlags(self._rt.cudaStreamNonBlocking),
                                     "cudaStreamCreateWithFlags")
                self._ptr = int(check(self._rt.cudaMalloc(byte_size), f"cudaMalloc({byte_size})"))
                handle = check(self._rt.cudaIpcGetMemHandle(self._ptr), "cudaIpcGetMemHandle")
                self.raw_handle: bytes = ipc_handle_bytes(handle)
            except BaseException:
                self.close()
                raise

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
        """Copy raw bytes to the device at `offset`; on the device when this returns (the server may
        read them at once)."""
        raw = as_byte_array(data)
        address = self._address(offset, raw.size)
        if raw.size:
            with on_device(self._rt, self.device_id):
                check(self._rt.cudaMemcpyAsync(address, raw.ctypes.data, raw.size,
                                               self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream),
                      f"cudaMemcpyAsync host to device ({raw.size} bytes into {self.name} at {offset})")
                # From pageable memory the call returns once `raw` is staged, not once it is on the
                # device: the request must not leave before the DMA is done (module docstring).
                self._synchronize(f"copying {raw.size} bytes into {self.name}")
        return raw.size

    def fill(self, offset: int, nbytes: int, value: int = 0) -> None:
        """Set `nbytes` bytes at `offset` to `value`; done on the device when this returns."""
        address = self._address(offset, nbytes)
        if not nbytes:
            return
        with on_device(self._rt, self.device_id):
            check(self._rt.cudaMemsetAsync(address, value, nbytes, self._stream),
                  f"cudaMemsetAsync ({nbytes} bytes of {self.name})")
            self._synchronize(f"setting {nbytes} bytes of {self.name}")

    def _synchronize(self, what: str) -> None:
        check(self._rt.cudaStreamSynchronize(self._stream), f"cudaStreamSynchronize after {what}")

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
            with on_device(self._rt, self.device_id):
                check(self._rt.cudaMemcpyAsync(out.ctypes.data, address, out.nbytes,
                                               self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream),
                      f"cudaMemcpyAsync device to host ({out.nbytes} bytes from {self.name} at {offset})")
                # Into pageable memory the copy is complete when the call returns already; into
                # pinned memory (an `out` the caller page-locked) it is not: synchronize either way.
                self._synchronize(f"copying {out.nbytes} bytes out of {self.name}")
        return out

    def read_bytes(self, offset: int, shape: tuple[int, ...] | list[int], byte_size: int | None = None) -> np.ndarray:
        """A BYTES tensor copied from the device and decoded."""
        limit = self.byte_size - offset if byte_size is None else byte_size
        host = self.read_raw(offset, np.empty(limit, np.uint8))
        return decode_bytes_tensor(host, tuple(int(d) for d in shape))

    def close(self) -> None:
        """Free the device memory and the stream. Idempotent. Both are freed even where one fails
        (the runtime's calls return their errors): then the first error is raised."""
        pointer, self._ptr = self._ptr, None
        stream, self._stream = self._stream, None
        if pointer is None and stream is None:
            return
        with on_device(self._rt, self.device_id):
            freed = self._rt.cudaFree(pointer) if pointer is not None else None
            destroyed = self._rt.cudaStreamDestroy(stream) if stream is not None else None
        if freed is not None:
            check(freed, f"cudaFree ({self.name})")
        if destroyed is not None:
            check(destroyed, f"cudaStreamDestroy ({self.name})")

    def __enter__(self) -> CudaRegion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"CudaRegion({self.name!r}, {self.byte_size}, device {self.device_id}, {state})"
