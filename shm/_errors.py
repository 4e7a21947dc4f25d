"""One exception hierarchy for shared-memory trouble, carrying the server's own text.

The server's texts below are those of Triton 2.51 (the same over gRPC and HTTP; only the status
differs), checked against the real server:

| text                                                   | gRPC / HTTP            | type                    |
|--------------------------------------------------------|------------------------|-------------------------|
| Unable to open shared memory region: '/key'            | INTERNAL / 500         | RegionKeyError          |
| failed to register shared memory region 'n': invalid args | INVALID_ARGUMENT / 400 | RegistrationRefused |
| shared memory region 'n' already in manager            | ALREADY_EXISTS / 400   | RegionAlreadyRegistered |
| Invalid shared memory region: '/key'                   | INTERNAL / 500         | KeyAlreadyRegistered    |
| Invalid offset for shared memory region: 'n'           | INVALID_ARGUMENT / 400 | RegionBoundsError       |
| Invalid offset + byte size for shared memory region: 'n' | INVALID_ARGUMENT / 400 | RegionBoundsError     |
| ... (32 bytes) should be at least 64 bytes to hold the results | INTERNAL / 500 | RegionBoundsError       |
| Unable to find shared memory region: 'n'               | NOT_FOUND / 404        | RegionNotRegistered     |
"""

from __future__ import annotations

import re


class ShmError(Exception):
    """Base of every shared-memory error. `str()` is the full text (the server's, with its status);
    `message` is the server's or the OS's text alone; `status` the gRPC status or HTTP code, if any."""

    def __init__(self, text: str, *, message: str | None = None, status: str | None = None) -> None:
        super().__init__(text)
        self.message = text if message is None else message
        self.status = status

    @property
    def region(self) -> str | None:
        """The region name or key the server's text quotes, if it quotes one."""
        match = re.search(r"'([^']*)'", self.message)
        return match.group(1) if match else None


class RegionKeyError(ShmError):
    """The server cannot open the region's key: no such object in /dev/shm."""


class RegistrationRefused(ShmError):
    """The server opened the key but refused to map it: `byte_size` larger than the object, a zero
    size, or (CUDA) an IPC handle it cannot open. Triton says only "invalid args"."""


class RegionAlreadyRegistered(ShmError):
    """The name is registered already."""


class KeyAlreadyRegistered(RegionAlreadyRegistered):
    """The key is registered already under another name. Triton 2.51 reuses the first
    registration's file descriptor, closed by then, so it reports "Invalid shared memory region"."""


class RegionBoundsError(ShmError):
    """An offset or size in a request does not fit the registered region, or an output slot is
    smaller than the answer."""


class RegionNotRegistered(ShmError):
    """A request (or a status query) names a region the server does not know."""


class CudaUnavailable(ShmError):
    """CUDA shared memory cannot be used here; the message says why."""


class CudaError(ShmError):
    """A CUDA runtime call failed; `code` is the cudaError_t value."""

    def __init__(self, text: str, code: int | None = None) -> None:
        super().__init__(text)
        self.code = code


# Server texts -> error type; the first match wins (order matters: the key case before the rest).
_PATTERNS: tuple[tuple[str, type[ShmError]], ...] = (
    ("already in manager", RegionAlreadyRegistered),
    ("Invalid shared memory region", KeyAlreadyRegistered),
    ("Unable to open shared memory region", RegionKeyError),
    ("failed to register shared memory region", RegistrationRefused),
    ("Invalid offset + byte size for shared memory region", RegionBoundsError),
    ("Invalid offset for shared memory region", RegionBoundsError),
    ("to hold the results", RegionBoundsError),
    ("Unable to find shared memory region", RegionNotRegistered),
    ("Unable to find system shared memory region", RegionNotRegistered),
    ("Unable to find cuda shared memory region", RegionNotRegistered),
)


def classify_server_error(exc: BaseException) -> ShmError | None:
    """The typed error for a server error about shared memory (a tritonclient
    InferenceServerException from either client), or None when the error is about something else.
    Workers call it on infer errors; the pool and the registration helpers use it too."""
    if isinstance(exc, ShmError):
        return exc
    text = str(exc)
    for needle, kind in _PATTERNS:
        if needle in text:
            return kind(text, message=_server_message(exc), status=_server_status(exc))
    return None


def server_error(what: str, exc: BaseException) -> ShmError:
    """`exc` as a typed error when it is one, else a plain ShmError saying what was being done."""
    typed = classify_server_error(exc)
    if typed is not None:
        return typed
    return ShmError(f"{what}: {exc}", message=_server_message(exc), status=_server_status(exc))


def _server_message(exc: BaseException) -> str:
    message = getattr(exc, "message", None)  # InferenceServerException.message() is a method
    text = message() if callable(message) else None
    return text if isinstance(text, str) and text else str(exc)


def _server_status(exc: BaseException) -> str | None:
    status = getattr(exc, "status", None)
    value = status() if callable(status) else None
    return None if value is None else str(value)
