"""A POSIX shared-memory region the process owns: /dev/shm/<name>, mapped once.

Created with os.open(O_CREAT | O_EXCL) rather than multiprocessing.shared_memory, whose resource
tracker warns about and unlinks regions behind the owner's back.
"""

from __future__ import annotations

import mmap
import os

import numpy as np
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

SHM_DIR = "/dev/shm"


def tensor_bytes(array: np.ndarray) -> bytes:
    """The bytes Triton expects for a tensor: raw for numbers, length-prefixed for BYTES."""
    if array.dtype == np.object_:
        return serialize_byte_tensor(array).item() if array.size else b""  # a 0-d array holding the bytes
    return np.ascontiguousarray(array).tobytes()


class SystemRegion:
    def __init__(self, name: str, byte_size: int) -> None:
        if byte_size <= 0:
            raise ValueError(f"region {name}: size must be positive, got {byte_size}")
        self.name = name
        self.byte_size = byte_size
        self.path = os.path.join(SHM_DIR, name)
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, byte_size)
            self._map: mmap.mmap | None = mmap.mmap(fd, byte_size)
        except BaseException:
            os.close(fd)
            os.unlink(self.path)
            raise
        os.close(fd)  # the mapping keeps the memory; the name keeps the object for the server

    @property
    def key(self) -> str:
        """What the server opens: '/' + name."""
        return "/" + self.name

    def _buffer(self) -> mmap.mmap:
        if self._map is None:
            raise ValueError(f"region {self.name} is closed")
        return self._map

    def write(self, offset: int, array: np.ndarray) -> int:
        """Copy `array` in at `offset` (BYTES tensors serialized as Triton reads them); returns bytes written."""
        raw = tensor_bytes(array)
        if offset < 0 or offset + len(raw) > self.byte_size:
            raise ValueError(f"region {self.name}: {len(raw)} bytes at offset {offset} do not fit {self.byte_size}")
        self._buffer()[offset:offset + len(raw)] = raw
        return len(raw)

    def view(self, offset: int, dtype: np.dtype | type, shape: tuple[int, ...]) -> np.ndarray:
        """A numpy view of the region's bytes (no copy): valid until close()."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape)) if shape else 1
        return np.frombuffer(self._buffer(), dtype=dtype, count=count, offset=offset).reshape(shape)

    def read_bytes_tensor(self, offset: int, byte_size: int, shape: tuple[int, ...]) -> np.ndarray:
        """A BYTES tensor (object array) decoded from the region (a copy: the strings are new objects)."""
        raw = bytes(self._buffer()[offset:offset + byte_size])
        return deserialize_bytes_tensor(raw).reshape(shape)

    def close(self) -> None:
        """Unmap and unlink. Idempotent; views taken earlier must not be used afterwards."""
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # a live numpy view pins the mapping; it goes when the view does
            self._map = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    @property
    def closed(self) -> bool:
        return self._map is None

    def __enter__(self) -> "SystemRegion":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
