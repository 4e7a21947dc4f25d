"""Typed errors for shared-memory trouble, carrying the server's own text."""

from __future__ import annotations


class ShmError(Exception):
    """Base of every shared-memory error; `str()` is the server's or the OS's text."""


class RegionKeyError(ShmError):
    """The server cannot open the region's key (no such object in /dev/shm)."""


class RegionBoundsError(ShmError):
    """A size or offset does not fit the region (or an output region is too small)."""


class RegionNotRegistered(ShmError):
    """A request names a region the server does not know."""


class RegionAlreadyRegistered(ShmError):
    """The name is registered already (or the key is, under another name)."""


class RegistrationRefused(ShmError):
    """The server refused to map the region (e.g. larger than the object, or a bad CUDA handle)."""


class CudaUnavailable(ShmError):
    """CUDA shared memory cannot be used here; the message says why."""


class CudaError(ShmError):
    """A CUDA runtime call failed."""


# Server texts (Triton 2.51, gRPC and HTTP alike) -> error type; the first match wins.
_PATTERNS: tuple[tuple[str, type[ShmError]], ...] = (
    ("already in manager", RegionAlreadyRegistered),
    ("Unable to open shared memory region", RegionKeyError),
    ("Invalid offset + byte size", RegionBoundsError),
    ("should be at least", RegionBoundsError),
    ("Invalid shared memory region", RegionBoundsError),  # also: the key is registered under another name
    ("Unable to find shared memory region", RegionNotRegistered),
    ("Unable to find system shared memory region", RegionNotRegistered),
    ("Unable to find cuda shared memory region", RegionNotRegistered),
    ("failed to register shared memory region", RegistrationRefused),
)


def classify(exc: BaseException) -> ShmError | None:
    """The typed error for a server error about shared memory, or None when it is about something else."""
    text = str(exc)
    for needle, kind in _PATTERNS:
        if needle in text:
            return kind(text)
    return None
