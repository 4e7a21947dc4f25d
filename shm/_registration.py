"""Register, unregister and list regions through either tritonclient client, gRPC or HTTP.

Both clients have the same method names; they differ in what the status calls return (gRPC: a
protobuf, or with as_json a dict `{"regions": {name: {...}}}` whose numbers are strings; HTTP: a
list of dicts) and are normalized here to `RegisteredRegion`s. Server errors come back typed
(see _errors). The sync clients only: the asyncio ones return coroutines.
"""

from __future__ import annotations

import base64
import inspect
from dataclasses import dataclass
from typing import Any

from ._errors import server_error

SYSTEM = "system"
CUDA = "cuda"
KINDS = (SYSTEM, CUDA)


@dataclass(frozen=True)
class RegisteredRegion:
    """One region as the server's status reports it."""

    name: str
    kind: str  # "system" | "cuda"
    byte_size: int
    key: str = ""  # system regions: the POSIX key
    offset: int = 0  # system regions: the registration offset (always 0 here, see register_system)
    device_id: int = -1  # CUDA regions


def protocol_of(client: Any) -> str:
    """"grpc" or "http" for a tritonclient client (sync or asyncio); ValueError otherwise."""
    module = type(client).__module__
    for protocol in ("grpc", "http"):
        if module == f"tritonclient.{protocol}" or module.startswith(f"tritonclient.{protocol}."):
            return protocol
    raise ValueError(f"not a tritonclient gRPC or HTTP client: {type(client).__module__}.{type(client).__name__}")


def require_sync(client: Any) -> None:
    protocol_of(client)
    if inspect.iscoroutinefunction(getattr(client, "register_system_shared_memory", None)):
        raise TypeError("shared memory registration needs a synchronous tritonclient client; "
                        "asyncio clients can still send requests that name the regions")


def _call(what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return method(*args, **kwargs)
    except Exception as exc:  # InferenceServerException from either client, or a transport error
        raise server_error(what, exc) from exc


def register_system(client: Any, name: str, key: str, byte_size: int) -> None:
    """Register POSIX region `key` under `name`, always at offset 0: Triton 2.51 applies a non-zero
    registration offset twice (reads and writes land at 2 x offset), so tensors place themselves
    inside the region with per-request offsets instead."""
    _call(f"register system region {name!r} ({key}, {byte_size} bytes)",
          client.register_system_shared_memory, name, key, byte_size)


def register_cuda(client: Any, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
    """Register a CUDA IPC handle (its raw 64 bytes) under `name`.

    Both tritonclient clients take the handle base64-encoded (as tritonclient's own
    cuda_shared_memory.get_raw_handle returns it): the gRPC client decodes it back to raw bytes for
    the protobuf, the HTTP client sends it as {"b64": ...}."""
    _call(f"register CUDA region {name!r} (device {device_id}, {byte_size} bytes)",
          client.register_cuda_shared_memory, name, base64.b64encode(raw_handle), device_id, byte_size)


def unregister(client: Any, name: str, kind: str = SYSTEM) -> None:
    """Unregister `name` (Triton answers success for a name it does not know)."""
    if kind == CUDA:
        _call(f"unregister CUDA region {name!r}", client.unregister_cuda_shared_memory, name)
    else:
        _call(f"unregister system region {name!r}", client.unregister_system_shared_memory, name)


def registered_regions(client: Any, kind: str = SYSTEM) -> tuple[RegisteredRegion, ...]:
    """What the server has registered now, of one kind."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    getter = client.get_cuda_shared_memory_status if kind == CUDA else client.get_system_shared_memory_status
    if protocol_of(client) == "grpc":
        status = _call(f"{kind} shared memory status", getter, as_json=True)
        entries = list((status or {}).get("regions", {}).values())
    else:
        entries = list(_call(f"{kind} shared memory status", getter) or [])
    return tuple(_region(kind, entry) for entry in entries)


def _region(kind: str, entry: dict[str, Any]) -> RegisteredRegion:
    # gRPC's JSON leaves out zero values and writes 64-bit numbers as strings.
    return RegisteredRegion(
        name=str(entry.get("name", "")), kind=kind, byte_size=int(entry.get("byte_size", 0)),
        key=str(entry.get("key", "")), offset=int(entry.get("offset", 0)),
        device_id=int(entry.get("device_id", 0 if kind == CUDA else -1)),
    )
