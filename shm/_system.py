"""A POSIX shared-memory region this process owns: /dev/shm/<name>, mapped once.

Created with os.open(O_CREAT | O_EXCL) + ftruncate + mmap rather than with
multiprocessing.shared_memory (which tritonclient.utils.shared_memory wraps): that one's
resource tracker warns about, and unlinks, regions behind the owner's back when a process exits.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import struct

import numpy as np
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from ._errors import ShmError

SHM_DIR = "/dev/shm"
KIND = "system"


def is_bytes_dtype(dtype: np.dtype) -> bool:
    """BYTES tensors: object arrays of bytes/str, or fixed-width bytes arrays."""
    return dtype == np.object_ or dtype.kind == "S"


def tensor_bytes(array: np.ndarray) -> np.ndarray:
    """The bytes Triton reads for `array`, as a flat uint8 array: the raw values for numbers (no
    copy when `array` is contiguous), 4-byte-length-prefixed elements for BYTES."""
    if is_bytes_dtype(array.dtype):
        if array.size == 0:
            return np.empty(0, np.uint8)
        return np.frombuffer(serialize_byte_tensor(array).item(), dtype=np.uint8)
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def as_byte_array(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """`data` as a flat uint8 array (no copy when it is contiguous already)."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def bytes_tensor_extent(buffer: np.ndarray, count: int) -> int:
    """Length of the first `count` serialized BYTES elements in `buffer` (uint8). The server does
    not say how many bytes it wrote into an output region, so the elements are walked."""
    position, end = 0, len(buffer)
    for _ in range(count):
        if position + 4 > end:
            raise ValueError(f"BYTES tensor: element length runs past the {end}-byte slot")
        (length,) = struct.unpack_from("<I", buffer, position)
        position += 4 + length
    if position > end:
        raise ValueError(f"BYTES tensor: {position} bytes do not fit the {end}-byte slot")
    return position


def decode_bytes_tensor(buffer: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A BYTES tensor (object array of bytes) from the serialized form at the start of `buffer`."""
    count = math.prod(shape)
    if count == 0:
        return np.empty(shape, dtype=np.object_)
    extent = bytes_tensor_extent(buffer, count)
    return deserialize_bytes_tensor(buffer[:extent].tobytes()).reshape(shape)


def _room_for_region(shm_dir: str) -> int:
    """Bytes a new region can take: the tmpfs's free space, capped by memory the kernel can give.

    tmpfs pages are RAM (or swap), so a /dev/shm mounted larger than the memory left cannot
    really hold its nominal free space.
    """
    fs = os.statvfs(shm_dir)
    room = fs.f_bavail * fs.f_frsize
    try:
        with open("/proc/meminfo", "rb") as meminfo:
            fields = dict(line.split(b":", 1) for line in meminfo)
        available_kib = int(fields[b"MemAvailable"].split()[0]) + int(fields[b"SwapFree"].split()[0])
    except (OSError, KeyError, ValueError):
        return room  # not Linux, or an odd /proc: the tmpfs's own answer is all there is
    return min(room, available_kib * 1024)


class SystemRegion:
    """`/dev/shm/<name>` of `byte_size` bytes, created exclusively, mapped read-write.

    `view()` gives zero-copy numpy views (valid until close), `write()` copies a tensor in.
    close() unmaps and unlinks; it is idempotent. Not thread-safe: one owner at a time.
    """

    kind = KIND

    def __init__(self, name: str, byte_size: int, *, shm_dir: str = SHM_DIR, mode: int = 0o600) -> None:
        if not name or "/" in name:
            raise ValueError(f"region name {name!r}: one path component, no '/'")
        if byte_size <= 0:
            raise ValueError(f"region {name}: size must be positive, got {byte_size}")
        self.name = name
        self.byte_size = byte_size
        self.path = os.path.join(shm_dir, name)
        # O_EXCL: never adopt (and later unlink) an object someone else made under this name.
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode)
        try:
            # Reserve the pages now: a tmpfs too small for the region (a container's 64 MiB
            # /dev/shm, say) fails here with ENOSPC instead of killing the process with SIGBUS on
            # the first write past what it can hold.
            # Refuse up front what cannot fit: on a tmpfs sized like the machine's RAM, a
            # posix_fallocate that is bound to fail first takes every free page and wakes the OOM
            # killer, which may pick this process (or the server) before ENOSPC comes back.
            room = _room_for_region(shm_dir)
            if byte_size > room:
                raise ShmError(f"region {name}: cannot reserve {byte_size} bytes in {shm_dir} "
                               f"(room for {room}: free space in {shm_dir} and available memory)")
            try:
                os.posix_fallocate(fd, 0, byte_size)
            except OSError as exc:
                free = os.statvfs(shm_dir)
                raise ShmError(f"region {name}: cannot reserve {byte_size} bytes in {shm_dir} "
                               f"({free.f_bavail * free.f_frsize} free): {exc.strerror}") from None
            self._map: mmap.mmap | None = mmap.mmap(fd, byte_size)
        except BaseException:
            os.close(fd)
            os.unlink(self.path)
            raise
        os.close(fd)  # the mapping keeps the memory, the name keeps the object for the server
        self._mem: np.ndarray | None = np.frombuffer(self._map, dtype=np.uint8)

    @property
    def key(self) -> str:
        """What the server opens: '/' + name."""
        return "/" + self.name

    @property
    def size(self) -> int:
        return self.byte_size

    @property
    def closed(self) -> bool:
        return self._map is None

    def _span(self, offset: int, nbytes: int) -> np.ndarray:
        if self._mem is None:
            raise ValueError(f"region {self.name} is closed")
        if offset < 0 or nbytes < 0 or offset + nbytes > self.byte_size:
            raise ValueError(f"region {self.name}: {nbytes} bytes at offset {offset} do not fit {self.byte_size}")
        return self._mem[offset:offset + nbytes]

    def write(self, offset: int, array: np.ndarray) -> int:
        """Copy `array` in at `offset` (BYTES serialized as Triton reads them); returns the bytes written."""
        raw = tensor_bytes(np.asarray(array))
        self._span(offset, raw.size)[:] = raw
        return raw.size

    def write_raw(self, offset: int, data: bytes | bytearray | memoryview | np.ndarray) -> int:
        raw = as_byte_array(data)
        self._span(offset, raw.size)[:] = raw
        return raw.size

    def fill(self, offset: int, nbytes: int, value: int = 0) -> None:
        """Set `nbytes` at `offset` to `value` (e.g. zero an output slot before a request)."""
        self._span(offset, nbytes).fill(value)

    def view(self, offset: int, dtype: np.dtype | type | str, shape: tuple[int, ...] | list[int]) -> np.ndarray:
        """A numpy view of the region's bytes, no copy. It shows whatever the server writes there
        next, and must not be used after close()."""
        dtype = np.dtype(dtype)
        if is_bytes_dtype(dtype):
            raise TypeError("BYTES tensors are serialized; read them with read_bytes()")
        shape = tuple(int(d) for d in shape)
        return self._span(offset, math.prod(shape) * dtype.itemsize).view(dtype).reshape(shape)

    def read_bytes(self, offset: int, shape: tuple[int, ...] | list[int], byte_size: int | None = None) -> np.ndarray:
        """A BYTES tensor decoded from the region (a copy: the elements are new bytes objects)."""
        limit = self.byte_size - offset if byte_size is None else byte_size
        return decode_bytes_tensor(self._span(offset, limit), tuple(int(d) for d in shape))

    def close(self) -> None:
        """Unmap and unlink. Idempotent. A view still alive keeps the mapping (not the name) until
        it is garbage-collected."""
        if self._map is None:
            return  # closed already: never unlink again, the name may belong to a new object now
        self._mem = None
        with contextlib.suppress(BufferError):  # a caller's view pins the mapping; unmapped when the view goes
            self._map.close()
        self._map = None
        with contextlib.suppress(FileNotFoundError):  # already removed, e.g. by a cleanup pass
            os.unlink(self.path)

    def __enter__(self) -> SystemRegion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"SystemRegion({self.name!r}, {self.byte_size}, {state})"
