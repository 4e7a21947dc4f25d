"""Suite-wide guard: a test run must leave no server, stub or shared-memory region behind."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

TEST_SHM_PREFIXES = ("tee",)  # every region the project makes in tests starts with this


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                kids = [int(x) for x in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            out.extend(kids)
            pending.extend(kids)
    return out


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _our_regions() -> set[str]:
    return {p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(TEST_SHM_PREFIXES)}


def _regions_in_use() -> set[str]:
    """Regions some live process still maps or holds open: another test session's server is
    using them, so they are not this session's leftovers (sessions may run side by side)."""
    used: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for line in (proc / "maps").read_text().splitlines():
                if "/dev/shm/" in line:
                    used.add(line.split("/dev/shm/", 1)[1].split(" ")[0])
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("/dev/shm/"):
                    used.add(target[len("/dev/shm/"):].split(" ")[0])
        except OSError:
            continue
    return used


_BEFORE: set[str] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    _BEFORE.update(_our_regions())  # not ours to judge: there before this session began


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leftovers = [pid for pid in _descendants(os.getpid()) if "triton" in _command(pid)]
    regions = sorted(_our_regions() - _BEFORE - _regions_in_use())
    if not leftovers and not regions:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for pid in leftovers:
        if reporter:
            reporter.write_line(f"LEFTOVER process {pid}: {_command(pid)}", red=True)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for name in regions:
        if reporter:
            reporter.write_line(f"LEFTOVER shared memory /dev/shm/{name}", red=True)
        (Path("/dev/shm") / name).unlink(missing_ok=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED

