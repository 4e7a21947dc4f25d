"""A worker's pool of registered regions, handing out slots for input and output tensors.

Regions are created and registered once, then reused: a slot is (region, offset, size), carved
64-byte aligned from the current region, and returned to a free list by size when released, so
a steady load allocates nothing after warm-up.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._cuda import CudaRegion
from ._errors import ShmError
from ._naming import region_name
from ._registration import is_grpc, register_cuda, register_system, unregister
from ._system import SystemRegion, tensor_bytes
from .gpu import gpu_count, gpu_unavailable_reason

ALIGN = 64
DEFAULT_REGION_BYTES = 4 << 20


@dataclass(frozen=True)
class Slot:
    """Where a tensor lives: what a request names, and what crosses process lines."""

    region: str
    offset: int
    byte_size: int


def resolve_mode(mode: str) -> tuple[str, str]:
    """("system" | "cuda", why auto fell back, or "")."""
    if mode not in ("system", "cuda", "auto"):
        raise ValueError(f"shared memory mode must be system, cuda or auto, not {mode!r}")
    if mode != "auto":
        return mode, ""
    if gpu_count() > 0:
        return "cuda", ""
    return "system", f"auto fell back to system shared memory: {gpu_unavailable_reason()}"


class ShmPool:
    def __init__(self, client: Any, run_id: str, worker_id: int, mode: str = "system",
                 region_bytes: int = DEFAULT_REGION_BYTES, device_id: int = 0) -> None:
        self.client = client
        self.run_id, self.worker_id = run_id, worker_id
        self.mode, self.fallback_reason = resolve_mode(mode)
        self.region_bytes = region_bytes
        self.device_id = device_id
        self._regions: dict[str, SystemRegion | CudaRegion] = {}
        self._current: SystemRegion | CudaRegion | None = None
        self._used = 0  # bytes handed out of the current region
        self._free: dict[int, collections.deque[Slot]] = collections.defaultdict(collections.deque)
        self._closed = False

    # -- slots --------------------------------------------------------------------------------
    def allocate(self, byte_size: int) -> Slot:
        if self._closed:
            raise ShmError("the pool is closed")
        free = self._free.get(byte_size)
        if free:
            return free.popleft()
        size = -(-byte_size // ALIGN) * ALIGN
        if self._current is None or self._used + size > self._current.byte_size:
            self._current = self._new_region(max(size, self.region_bytes))
            self._used = 0
        slot = Slot(self._current.name, self._used, byte_size)
        self._used += size
        return slot

    def release(self, slot: Slot) -> None:
        self._free[slot.byte_size].append(slot)

    def _new_region(self, byte_size: int) -> SystemRegion | CudaRegion:
        name = region_name(self.run_id, self.worker_id, len(self._regions))
        region: SystemRegion | CudaRegion
        if self.mode == "cuda":
            region = CudaRegion(name, byte_size, self.device_id)
        else:
            region = SystemRegion(name, byte_size)
        try:
            if isinstance(region, CudaRegion):
                register_cuda(self.client, name, region.raw_handle_b64, self.device_id, byte_size)
            else:
                register_system(self.client, name, region.key, byte_size)
        except BaseException:
            region.close()
            raise
        self._regions[name] = region
        return region

    # -- data -----------------------------------------------------------------------------------
    def write(self, slot: Slot, array: np.ndarray) -> int:
        return self._regions[slot.region].write(slot.offset, array)

    def read(self, slot: Slot, dtype: np.dtype | type, shape: tuple[int, ...]) -> np.ndarray:
        """An output tensor: a zero-copy view for system memory (valid until the slot is reused), a
        host copy for CUDA. BYTES outputs are decoded (a copy either way)."""
        region = self._regions[slot.region]
        if np.dtype(dtype) == np.object_:
            return region.read_bytes_tensor(slot.offset, slot.byte_size, shape)
        if isinstance(region, CudaRegion):
            return region.read(slot.offset, dtype, shape)
        return region.view(slot.offset, dtype, shape)

    def infer_input(self, name: str, array: np.ndarray, datatype: str, slot: Slot | None = None,
                    protocol_module: Any = None) -> tuple[Any, Slot]:
        """Write `array` into a slot (allocated when not given) and return the InferInput naming it."""
        module = protocol_module or _module(self.client)
        raw_size = _byte_size(array)
        slot = slot or self.allocate(raw_size)
        written = self.write(slot, array)
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_shared_memory(slot.region, written, offset=slot.offset)
        return tensor, slot

    def requested_output(self, name: str, slot: Slot, protocol_module: Any = None) -> Any:
        module = protocol_module or _module(self.client)
        output = module.InferRequestedOutput(name)
        output.set_shared_memory(slot.region, slot.byte_size, offset=slot.offset)
        return output

    @property
    def region_names(self) -> list[str]:
        return list(self._regions)

    # -- lifecycle ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Unregister every region from the server and free it. Idempotent; errors on the way do
        not stop the rest from being released."""
        if self._closed:
            return
        self._closed = True
        first_error: BaseException | None = None
        for name, region in self._regions.items():
            try:
                unregister(self.client, name, cuda=isinstance(region, CudaRegion))
            except Exception as exc:  # the server may be gone; the local memory is freed regardless
                first_error = first_error or exc
            region.close()
        self._regions.clear()
        self._free.clear()
        self._current = None
        if first_error is not None:
            raise first_error

    def __enter__(self) -> "ShmPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _module(client: Any) -> Any:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    return grpcclient if is_grpc(client) else httpclient


def _byte_size(array: np.ndarray) -> int:
    return len(tensor_bytes(array)) if array.dtype == np.object_ else array.nbytes
