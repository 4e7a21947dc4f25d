"""Register, unregister and list regions through either tritonclient client (gRPC or HTTP)."""

from __future__ import annotations

from typing import Any

from ._errors import ShmError, classify


def is_grpc(client: Any) -> bool:
    return type(client).__module__.startswith("tritonclient.grpc")


def _call(what: str, fn, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # tritonclient raises InferenceServerException for both protocols
        typed = classify(exc)
        if typed is not None:
            raise typed from exc
        raise ShmError(f"{what}: {exc}") from exc


def register_system(client: Any, name: str, key: str, byte_size: int) -> None:
    # Offset 0 always: Triton 2.51 applies a non-zero registration offset twice.
    _call(f"register {name}", client.register_system_shared_memory, name, key, byte_size)


def register_cuda(client: Any, name: str, raw_handle_b64: bytes, device_id: int, byte_size: int) -> None:
    _call(f"register {name}", client.register_cuda_shared_memory, name, raw_handle_b64, device_id, byte_size)


def unregister(client: Any, name: str, cuda: bool = False) -> None:
    if cuda:
        _call(f"unregister {name}", client.unregister_cuda_shared_memory, name)
    else:
        _call(f"unregister {name}", client.unregister_system_shared_memory, name)


def registered_regions(client: Any, cuda: bool = False) -> dict[str, dict[str, Any]]:
    """name -> {key/device_id, byte_size, ...} of what the server has registered now."""
    getter = client.get_cuda_shared_memory_status if cuda else client.get_system_shared_memory_status
    status = _call("shared memory status", getter, **({"as_json": True} if is_grpc(client) else {}))
    if isinstance(status, dict):  # gRPC as JSON: {"regions": {name: {...}}}
        return dict(status.get("regions", {}))
    return {entry["name"]: entry for entry in status or []}  # HTTP: [{name, key, ...}]
