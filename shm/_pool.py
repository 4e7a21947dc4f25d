"""A worker's pool of registered regions, handing out slots for input and output tensors.

Regions are created and registered with the server once (offset 0), then carved into 64-byte
aligned slots. An input slot is written once and named by every request that sends that tensor;
an output slot is where the server writes an answer, read back as a numpy view (system memory,
no copy) or copied out (CUDA). Released slots go to a free list by size, so a steady load
allocates nothing after warm-up; the slot released last is handed out first, and trim() gives
back the regions a spike of load added once they have stayed unused for a while. Build the
InferInput / InferRequestedOutput objects once too:

    with ShmPool(client, run_id, worker_id, mode="auto") as pool:
        x = pool.input_slot(data)                       # written once
        y = pool.output_slot(x.byte_size)
        inputs, outputs = [pool.infer_input("INPUT0", x)], [pool.requested_output("OUTPUT0", y)]
        answer = pool.read(y, data.dtype, data.shape)   # a view: shows each new answer
        for _ in range(n):
            client.infer("identity_fp32", inputs, outputs=outputs)
            check(answer)

One pool per process (or per thread): it is not thread-safe.
"""

from __future__ import annotations

import collections
import importlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

from ._cuda import CudaRegion, require_device
from ._errors import RegionAlreadyRegistered, ShmError
from ._naming import check_run_id, region_name
from ._registration import (
    CUDA,
    SYSTEM,
    protocol_of,
    register_cuda,
    register_system,
    require_sync,
    unregister,
)
from ._system import SystemRegion, is_bytes_dtype, tensor_bytes
from .gpu import gpu_count, gpu_unavailable_reason

ALIGN = 64  # slot offsets: cache-line aligned, and aligned for every Triton datatype
DEFAULT_REGION_BYTES = 1 << 20
# trim(): a region none of whose slots has been in use for this long is given back. A spike of
# load (or of requests the client gave up on, whose slots wait out a quarantine) grows a pool; a
# pool that kept every region would keep the spike's high-water mark of /dev/shm for the run.
IDLE_REGION_S = 300.0
MODES = ("system", "cuda", "auto")
_NAME_ATTEMPTS = 64  # names taken by a dead predecessor of this worker are skipped, up to this many


def align(byte_size: int) -> int:
    return -(-byte_size // ALIGN) * ALIGN


@dataclass(frozen=True)
class Slot:
    """Where a tensor lives: all a request needs to name it. Picklable, so it can cross process lines."""

    region: str  # the region's name, as registered with the server
    offset: int
    byte_size: int
    kind: str = SYSTEM  # "system" | "cuda"
    datatype: str = ""  # input slots: the Triton datatype written there
    shape: tuple[int, ...] = ()  # input slots: the tensor's shape

    def infer_input(self, name: str, protocol: str = "grpc") -> Any:
        """A tritonclient InferInput for `protocol` ("grpc" | "http") reading this slot."""
        if not self.datatype:
            raise ValueError(f"slot {self.region}@{self.offset} holds no tensor; fill it with input_slot()")
        tensor = client_module(protocol).InferInput(name, list(self.shape), self.datatype)
        tensor.set_shared_memory(self.region, self.byte_size, offset=self.offset)
        return tensor

    def requested_output(self, name: str, protocol: str = "grpc") -> Any:
        """A tritonclient InferRequestedOutput for `protocol` that the server writes into this slot."""
        output = client_module(protocol).InferRequestedOutput(name)
        output.set_shared_memory(self.region, self.byte_size, offset=self.offset)
        return output


def client_module(protocol: str) -> Any:
    if protocol not in ("grpc", "http"):
        raise ValueError(f"protocol must be 'grpc' or 'http', not {protocol!r}")
    return importlib.import_module(f"tritonclient.{protocol}")


def resolve_mode(mode: str) -> tuple[str, str]:
    """("system" | "cuda", why "auto" fell back to system memory, or "")."""
    if mode not in MODES:
        raise ValueError(f"shared memory mode must be one of {MODES}, not {mode!r}")
    if mode != "auto":
        return mode, ""
    if gpu_count() > 0:
        return CUDA, ""
    return SYSTEM, f"no GPU, system shared memory instead: {gpu_unavailable_reason() or 'no CUDA device'}"


class ShmPool:
    """Slots in regions named `tee_<run_id>_w<worker_id>_<n>`, registered with the server through
    `client` (a sync tritonclient gRPC or HTTP client). `mode`: "system", "cuda" or "auto" (CUDA
    when a GPU is usable, else system, with the reason in `fallback_reason`). CUDA regions live on
    GPU `device_id` (CudaUnavailable at once where there is no such device), and every write into
    one is on the device when it returns: a request may be sent right after."""

    def __init__(self, client: Any, run_id: str, worker_id: int, mode: str = "system", *,
                 region_bytes: int = DEFAULT_REGION_BYTES, device_id: int = 0) -> None:
        require_sync(client)
        if region_bytes <= 0:
            raise ValueError(f"region_bytes must be positive, got {region_bytes}")
        self.client = client
        self.protocol = protocol_of(client)
        self.run_id = check_run_id(run_id)
        self.worker_id = worker_id
        self.mode, self.fallback_reason = resolve_mode(mode)
        if self.mode == CUDA:  # fail at creation, not at the first slot
            require_device(device_id, "CUDA shared memory pool")
        self.region_bytes = align(region_bytes)
        self.device_id = device_id
        self._regions: dict[str, SystemRegion | CudaRegion] = {}
        self._next_index = 0
        self._current: SystemRegion | CudaRegion | None = None
        self._used = 0  # bytes carved from the current region
        # Released slots by aligned size, the Slot objects themselves: a slot taken again as it was
        # given back (an output slot per checked request) costs no new Slot.
        self._free: dict[int, collections.deque[Slot]] = collections.defaultdict(collections.deque)
        self._released: set[tuple[str, int]] = set()  # what is in _free, to refuse a double release
        self._in_use: collections.Counter[str] = collections.Counter()  # slots handed out, not released, by region
        self._idle_since: dict[str, float] = {}  # regions with no slot in use: since when (clock())
        self.clock = time.monotonic  # trim()'s clock (tests compress time with their own)
        self._closed = False

    # -- slots -------------------------------------------------------------------------------
    def allocate(self, byte_size: int) -> Slot:
        """Room for `byte_size` bytes: a released slot of that size, or a new one."""
        if self._closed:
            raise ShmError("the shared memory pool is closed")
        if byte_size <= 0:
            raise ValueError(f"slot size must be positive, got {byte_size}")
        capacity = align(byte_size)
        free = self._free.get(capacity)
        if free:
            # The slot released last: warm in the caches, and a spike's extra slots stay unused,
            # so that their regions can go (trim)
            slot = free.pop()
            self._released.discard((slot.region, slot.offset))
            if slot.byte_size != byte_size or slot.datatype:  # only a bare slot of this size as it is
                slot = Slot(slot.region, slot.offset, byte_size, self.mode)
        elif capacity > self.region_bytes:  # a region of its own; the current one keeps filling
            slot = Slot(self._new_region(capacity).name, 0, byte_size, self.mode)
        else:
            if self._current is None or self._used + capacity > self._current.byte_size:
                self._current = self._new_region(self.region_bytes)
                self._used = 0
            slot = Slot(self._current.name, self._used, byte_size, self.mode)
            self._used += capacity
        self._in_use[slot.region] += 1
        if self._idle_since:
            self._idle_since.pop(slot.region, None)
        return slot

    def input_slot(self, array: np.ndarray, datatype: str | None = None) -> Slot:
        """A slot holding `array` (written now, once), ready to be named by any number of requests."""
        array = np.asarray(array)
        datatype = datatype or ("BYTES" if is_bytes_dtype(array.dtype) else np_to_triton_dtype(array.dtype))
        raw = tensor_bytes(array)
        room = self.allocate(max(raw.size, 1))  # an empty tensor still gets an address
        self._regions[room.region].write_raw(room.offset, raw)
        return Slot(room.region, room.offset, raw.size, room.kind, datatype, tuple(array.shape))

    def output_slot(self, byte_size: int) -> Slot:
        """A slot for the server to write an answer of up to `byte_size` bytes into."""
        return self.allocate(byte_size)

    def write(self, slot: Slot, array: np.ndarray) -> None:
        """New values for an input slot: same byte size (same dtype and shape for numbers)."""
        raw = tensor_bytes(np.asarray(array))
        if raw.size != slot.byte_size:
            raise ValueError(f"slot holds {slot.byte_size} bytes, the new tensor has {raw.size}; "
                             "take a new input_slot() and release() this one")
        self._region(slot).write_raw(slot.offset, raw)

    def clear(self, slot: Slot) -> None:
        """Zero a slot, e.g. an output slot before a request, so a stale answer cannot pass a check."""
        self._region(slot).fill(slot.offset, slot.byte_size)

    def poison(self, slot: Slot, edge: int = 64) -> None:
        """Make a reused output slot fail any check until the server writes its answer there: the
        first and last `edge` bytes are set to 0xFF (NaN for floats, -1 for integers, an impossible
        length for BYTES). The same guarantee as clear() against a stale answer, for 128 bytes
        instead of the whole slot (clearing a large slot is a sizeable share of the shm path's cost)."""
        region = self._region(slot)
        if slot.byte_size <= 2 * edge:
            region.fill(slot.offset, slot.byte_size, 0xFF)
        else:
            region.fill(slot.offset, edge, 0xFF)
            region.fill(slot.offset + slot.byte_size - edge, edge, 0xFF)

    def written(self, slot: Slot, edge: int = 64) -> bool:
        """Whether the server has written into a slot poisoned by `poison()` since: its last bytes are
        no longer all 0xFF. How a request the client gave up on is known to be over on the server
        (a CUDA slot is read back through the device: 64 bytes)."""
        nbytes = min(edge, slot.byte_size)
        return bool((self._tail(slot, nbytes) != 0xFF).any())

    def _tail(self, slot: Slot, nbytes: int) -> np.ndarray:
        region = self._region(slot)
        offset = slot.offset + slot.byte_size - nbytes
        if isinstance(region, CudaRegion):
            return region.read_raw(offset, np.empty(nbytes, np.uint8))
        return region.view(offset, np.uint8, (nbytes,))

    def release(self, slot: Slot) -> None:
        """Give a slot back for reuse by a later allocation of the same aligned size."""
        self._region(slot)
        place = (slot.region, slot.offset)
        if place in self._released:
            raise ValueError(f"slot {slot.region}@{slot.offset} was released already")
        self._released.add(place)
        self._free[align(max(slot.byte_size, 1))].append(slot)
        left = self._in_use[slot.region] = self._in_use[slot.region] - 1
        if left <= 0:
            self._idle_since[slot.region] = self.clock()

    def discard(self, slot: Slot) -> bool:
        """Free a slot that has a region of its own (one larger than `region_bytes`) at once:
        unregistered and unlinked instead of kept for reuse, so a 1 GiB slot does not hold 1 GiB
        of /dev/shm for the rest of the run. False while the server still uses the region (try
        again later); a slot sharing its region is released for reuse instead."""
        region = self._region(slot)
        if slot.offset or region.byte_size <= self.region_bytes:
            self.release(slot)
            return True
        return self._give_back_region(slot.region)

    def trim(self, idle_s: float = IDLE_REGION_S) -> list[str]:
        """Give back every region none of whose slots has been in use for `idle_s` seconds (by
        `clock`): unregistered, unlinked, its free slots forgotten. A steady load takes the slot
        released last (allocate), so the regions a spike added fall idle and go, and the pool
        comes back to its steady size. The names given back (a region the server still uses is
        kept, and tried again next time). Call it now and then (a worker: every heartbeat)."""
        if self._closed or not self._idle_since:
            return []
        now = self.clock()
        gone = [name for name in [n for n, since in self._idle_since.items() if now - since >= idle_s]
                if self._give_back_region(name)]
        if gone:
            names = set(gone)
            for capacity, slots in self._free.items():
                if any(slot.region in names for slot in slots):
                    self._free[capacity] = collections.deque(s for s in slots if s.region not in names)
            self._released = {place for place in self._released if place[0] not in names}
        return gone

    def _give_back_region(self, name: str) -> bool:
        """Unregister a region, close (unlink) it and stop counting it; False while the server still
        uses it (it stays, to be tried again)."""
        try:
            unregister(self.client, name, self._regions[name].kind)
        except Exception as exc:
            if "currently in use" in str(exc):
                return False
            raise
        region = self._regions.pop(name)
        self._in_use.pop(name, None)
        self._idle_since.pop(name, None)
        if region is self._current:
            self._current, self._used = None, 0
        region.close()
        return True

    # -- requests ------------------------------------------------------------------------------
    def infer_input(self, name: str, slot: Slot) -> Any:
        """The InferInput (for this pool's client protocol) that reads input `name` from `slot`."""
        return slot.infer_input(name, self.protocol)

    def requested_output(self, name: str, slot: Slot) -> Any:
        """The InferRequestedOutput (for this pool's client protocol) written into `slot`."""
        return slot.requested_output(name, self.protocol)

    def read(self, slot: Slot, dtype: np.dtype | type | str, shape: tuple[int, ...] | list[int],
             out: np.ndarray | None = None) -> np.ndarray:
        """The tensor in `slot`: for system memory a zero-copy view (it shows the next answer
        written there too; valid until close); for CUDA a host copy (into `out` when given).
        BYTES tensors are decoded, a copy either way."""
        region = self._region(slot)
        if is_bytes_dtype(np.dtype(dtype)):
            return region.read_bytes(slot.offset, shape, slot.byte_size)
        if isinstance(region, CudaRegion):
            return region.read(slot.offset, dtype, shape, out=out)
        return region.view(slot.offset, dtype, shape)

    def read_output(self, result: Any, name: str, slot: Slot) -> np.ndarray:
        """`read()` with the datatype and shape the server's answer (an InferResult) gives for `name`."""
        output = result.get_output(name)
        if output is None:
            raise ShmError(f"the answer has no output {name!r}")
        if isinstance(output, dict):  # HTTP
            datatype, shape = output["datatype"], output["shape"]
        else:  # gRPC protobuf
            datatype, shape = output.datatype, output.shape
        return self.read(slot, triton_to_np_dtype(datatype), tuple(int(d) for d in shape))

    # -- regions -------------------------------------------------------------------------------
    @property
    def region_names(self) -> list[str]:
        return list(self._regions)

    @property
    def reserved_bytes(self) -> int:
        return sum(region.byte_size for region in self._regions.values())

    @property
    def closed(self) -> bool:
        return self._closed

    def _region(self, slot: Slot) -> SystemRegion | CudaRegion:
        try:
            return self._regions[slot.region]
        except KeyError:
            state = "closed" if self._closed else "open"
            raise ShmError(f"slot region {slot.region!r} is not one of this {state} pool's regions") from None

    def _new_region(self, byte_size: int) -> SystemRegion | CudaRegion:
        last_error: Exception | None = None
        for _ in range(_NAME_ATTEMPTS):
            name = region_name(self.run_id, self.worker_id, self._next_index)
            self._next_index += 1
            try:
                region = self._create(name, byte_size)
            except FileExistsError as exc:  # left by a killed predecessor with this worker id
                last_error = exc
                continue
            try:
                if isinstance(region, CudaRegion):
                    register_cuda(self.client, name, region.raw_handle, self.device_id, byte_size)
                else:
                    register_system(self.client, name, region.key, byte_size)
            except RegionAlreadyRegistered as exc:  # the name is still registered by a predecessor
                region.close()
                last_error = exc
                continue
            except BaseException:
                region.close()
                raise
            self._regions[name] = region
            return region
        raise ShmError(f"no free region name for run {self.run_id} worker {self.worker_id} after "
                       f"{_NAME_ATTEMPTS} tries (run shm.cleanup for the run): {last_error}")

    def _create(self, name: str, byte_size: int) -> SystemRegion | CudaRegion:
        if self.mode == CUDA:
            return CudaRegion(name, byte_size, self.device_id)
        return SystemRegion(name, byte_size)

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self, raise_errors: bool = True, busy_timeout: float = 30.0) -> None:
        """Unregister every region from the server and free it. Idempotent. An error on the way
        (the server gone, say) does not stop the rest from being freed; the first one is raised
        at the end unless `raise_errors` is false.

        The server refuses to unregister a region a request still uses ("currently in use": a
        request the client gave up on, by deadline, may still be running); such a region is
        retried for up to `busy_timeout` seconds."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        deadline = time.monotonic() + busy_timeout
        for name, region in self._regions.items():
            while True:
                try:
                    unregister(self.client, name, region.kind)
                except Exception as exc:
                    if "currently in use" in str(exc) and time.monotonic() < deadline:
                        time.sleep(0.1)
                        continue
                    errors.append(exc)
                break
            try:
                region.close()
            except Exception as exc:
                errors.append(exc)
        self._regions.clear()
        self._free.clear()
        self._released.clear()
        self._in_use.clear()
        self._idle_since.clear()
        self._current = None
        if errors and raise_errors:
            raise ShmError(f"closing the pool: {len(errors)} error(s), first: {errors[0]}") from errors[0]

    def __enter__(self) -> ShmPool:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # With an exception already on its way out, do not hide it behind a cleanup error.
        self.close(raise_errors=exc_type is None)

    def __repr__(self) -> str:
        return (f"ShmPool(run {self.run_id}, worker {self.worker_id}, {self.mode}, {len(self._regions)} regions, "
                f"{'closed' if self._closed else 'open'})")
