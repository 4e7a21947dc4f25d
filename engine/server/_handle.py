"""Values that describe a server to the rest of the engine (they cross process lines)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._bundled import STUB_NAME


@dataclass(frozen=True)
class ServerEndpoints:
    http: str  # "host:port", as tritonclient.http takes it
    grpc: str  # "host:port", as tritonclient.grpc takes it
    metrics: str  # full URL of the Prometheus endpoint


@dataclass(frozen=True)
class StubProcess:
    """One python backend stub: a process per model instance, child of the server."""

    pid: int
    instance: str  # e.g. "identity_fp32_0_0"; "" when the argv did not say


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids.extend(int(x) for x in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return kids


def find_stub_processes(server_pid: int) -> list[StubProcess]:
    """The stub processes below `server_pid`, found through /proc (the argv names the instance)."""
    stubs: list[StubProcess] = []
    pending = _children(server_pid)
    seen: set[int] = set()
    while pending:
        pid = pending.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].decode(errors="replace").endswith(STUB_NAME):
            # argv: stub, model.py, region, default size, growth, server pid, backend dir, ipc size, instance, ...
            instance = argv[8].decode(errors="replace") if len(argv) > 8 else ""
            stubs.append(StubProcess(pid=pid, instance=instance))
        pending.extend(_children(pid))
    return sorted(stubs, key=lambda s: s.pid)
