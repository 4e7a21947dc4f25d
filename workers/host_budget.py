"""A host-wide limit on the bytes of large requests in flight, shared by every worker on the host.

One large input (the timeout scenario's 1 GiB) costs the host several times its size while the
server holds it: the client's output slot, and the server's and its python stub's copies
(engine/memory_budget.py has the measured factors). Workers are separate processes, so the limit
lives in a small file (in the run's directory) that each of them maps: a header (limit, memory-pressure hold,
counters) and a table of leases. A lease is taken before a large request is sent and given back
when its answer is in; a request the client gave up on keeps its lease until the server has
written its answer, or until the lease's own expiry, since the server goes on working on it. The
expiry also frees the leases of a worker that died: nobody has to clean up after it.

Updates take an fcntl lock on the file for a few microseconds; nobody waits on the lock while
holding the event loop, since a worker only polls (`acquire` sleeps between tries).
"""

from __future__ import annotations

import asyncio
import fcntl
import mmap
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

_HEADER = struct.Struct("<8q")  # limit, pressure, granted, waits, wait_ns, skipped, peak, reserved
_LEASE = struct.Struct("<2q")  # bytes (0 = free), expiry (monotonic ns; the clock is host-wide)
LEASES = 256  # leases at once; more large requests than this in flight on one host wait
_SIZE = _HEADER.size + LEASES * _LEASE.size
POLL_S = 0.02  # how often a waiting request looks again
LARGE_REQUEST_BYTES = 32 << 20  # requests with inputs of at least this many bytes take a lease
HOLD_AFTER_DEADLINE_S = 60.0  # a lease outlives its plan's deadline by this, at most


@dataclass(frozen=True)
class BudgetFigures:
    """The budget's state and what it cost the run, as the monitor samples and the report shows."""

    limit_bytes: int
    in_flight_bytes: int
    peak_bytes: int  # the most bytes in flight at once so far
    granted: int  # large requests let through
    waits: int  # of which had to wait for their turn
    wait_s: float  # the time they waited, in total
    skipped: int  # large plans that waited their whole allowance and were not sent
    pressure: bool  # large requests held back because the host's memory is under pressure


class HostBudget:
    """The shared budget file `path`: made once by the coordinator (`create`), opened by each worker
    and by the monitor (`open`)."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._map = mmap.mmap(fd, _SIZE)
        self.last_wait_s = 0.0  # how long this process's last `acquire` waited

    @classmethod
    def create(cls, path: str, limit_bytes: int) -> HostBudget:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(fd, _SIZE)
        budget = cls(path, fd)
        with budget._locked():
            _HEADER.pack_into(budget._map, 0, limit_bytes, 0, 0, 0, 0, 0, 0, 0)
        return budget

    @classmethod
    def open(cls, path: str) -> HostBudget:
        return cls(path, os.open(path, os.O_RDWR))

    def close(self) -> None:
        if not self._map.closed:
            self._map.close()
            os.close(self._fd)

    # -- leases --------------------------------------------------------------------------------
    def try_acquire(self, nbytes: int, hold_s: float) -> int | None:
        """A lease on `nbytes` that expires after `hold_s` unless given back first; None when it
        would take the bytes in flight past the limit (or the host is under memory pressure).
        One request larger than the whole limit is let through alone, when nothing else is in
        flight: the start-up check has refused configs whose single large request cannot fit."""
        now = time.monotonic_ns()
        with self._locked():
            limit, pressure, granted, waits, wait_ns, skipped, peak, _ = _HEADER.unpack_from(self._map, 0)
            used, free = self._scan(now)
            if free is None or pressure or (used + nbytes > limit and used > 0):
                return None
            _LEASE.pack_into(self._map, _lease_offset(free), nbytes, now + int(hold_s * 1e9))
            _HEADER.pack_into(self._map, 0, limit, pressure, granted + 1, waits, wait_ns, skipped,
                              max(peak, used + nbytes), 0)
        return free

    async def acquire(self, nbytes: int, hold_s: float, wait_limit_s: float,
                      give_up: Callable[[], bool] = lambda: False) -> int | None:
        """Wait for a lease (polling), at most `wait_limit_s` or until `give_up()` (the worker is
        stopping); the wait is counted, and a request that got none in its time is counted as
        skipped."""
        lease = self.try_acquire(nbytes, hold_s)
        self.last_wait_s = 0.0
        if lease is not None:
            return lease
        began = time.monotonic_ns()
        until = began + int(wait_limit_s * 1e9)
        while lease is None and time.monotonic_ns() < until and not give_up():
            await asyncio.sleep(POLL_S)
            lease = self.try_acquire(nbytes, hold_s)
        waited = time.monotonic_ns() - began
        self.last_wait_s = waited / 1e9
        self._count_wait(waited, skipped=lease is None and not give_up())
        return lease

    def release(self, lease: int) -> None:
        with self._locked():
            _LEASE.pack_into(self._map, _lease_offset(lease), 0, 0)

    # -- the monitor's side ----------------------------------------------------------------------
    def set_pressure(self, hold: bool) -> None:
        """Hold back every new large request (True) until the host's memory pressure falls."""
        def flag(fields: list[int]) -> None:
            fields[1] = int(hold)
        self._update_header(flag)

    def figures(self) -> BudgetFigures:
        with self._locked():
            limit, pressure, granted, waits, wait_ns, skipped, peak, _ = _HEADER.unpack_from(self._map, 0)
            used, _ = self._scan(time.monotonic_ns())
        return BudgetFigures(limit, used, peak, granted, waits, wait_ns / 1e9, skipped, bool(pressure))

    # -- internals -----------------------------------------------------------------------------
    def _scan(self, now: int) -> tuple[int, int | None]:
        """Bytes of the live leases, and a free lease index (expired leases are freed on the way)."""
        used, free = 0, None
        for index in range(LEASES):
            offset = _lease_offset(index)
            nbytes, expiry = _LEASE.unpack_from(self._map, offset)
            if nbytes and expiry <= now:
                _LEASE.pack_into(self._map, offset, 0, 0)
                nbytes = 0
            if nbytes:
                used += nbytes
            elif free is None:
                free = index
        return used, free

    def _count_wait(self, waited_ns: int, skipped: bool) -> None:
        def count(fields: list[int]) -> None:
            fields[3] += 1
            fields[4] += waited_ns
            fields[5] += int(skipped)
        self._update_header(count)

    def _update_header(self, change: Callable[[list[int]], None]) -> None:
        """Read the header's fields, `change` them in place, write them back: under the lock."""
        with self._locked():
            fields = list(_HEADER.unpack_from(self._map, 0))
            change(fields)
            _HEADER.pack_into(self._map, 0, *fields)

    def _locked(self) -> _FileLock:
        return _FileLock(self._fd)


class _FileLock:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __enter__(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN)


def _lease_offset(index: int) -> int:
    return _HEADER.size + index * _LEASE.size
