"""One process's resources from /proc, as the kernel counts them (DETECTION.md §1): RssAnon
(heap: what a leak grows), RssFile, RssShmem (registered shm regions: not a heap leak), PSS,
open fds, threads, CPU seconds, and mappings of deleted /dev/shm files."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_STATUS_FIELDS = {"RssAnon:": "rss_anon", "RssFile:": "rss_file", "RssShmem:": "rss_shmem", "Threads:": "threads"}


def sample_process(pid: int, detailed: bool = True) -> dict[str, float] | None:
    """The process's figures, or None when it is gone (it may vanish between two reads).
    `detailed` adds PSS and the deleted-shm mappings: the kernel walks every mapping for those, a
    cost that grows with the server's mappings, so the monitor reads them only every few samples."""
    base = Path(f"/proc/{pid}")
    try:
        out: dict[str, float] = {"pid": float(pid)}
        for line in (base / "status").read_text().splitlines():
            name = _STATUS_FIELDS.get(line.split(None, 1)[0] if line else "")
            if name:
                value = float(line.split()[1])
                out[name] = value if name == "threads" else value * 1024  # kB -> bytes
        # Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
        stat = (base / "stat").read_text().rsplit(")", 1)[1].split()
        out["cpu_s"] = (int(stat[11]) + int(stat[12])) / _TICKS
        out["fds"] = float(len(os.listdir(base / "fd")))
        if not detailed:
            return out
        deleted = 0
        with open(base / "maps") as maps:
            for line in maps:
                if "/dev/shm/" in line and line.rstrip().endswith("(deleted)"):
                    deleted += 1
        out["deleted_shm_maps"] = float(deleted)
    except (OSError, ValueError, IndexError):
        return None
    try:  # PSS needs ptrace access to the process: readable for our own children
        for line in (base / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["pss"] = float(line.split()[1]) * 1024
                break
    except OSError:
        pass
    return out


def shm_footprint(prefixes: tuple[str, ...], directory: Path = Path("/dev/shm")) -> tuple[int, int]:
    """(files, bytes) of the /dev/shm entries whose names start with one of `prefixes`."""
    files = size = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0, 0
    for entry in entries:
        if entry.name.startswith(prefixes):
            try:
                size += entry.stat().st_blocks * 512  # what is really allocated, not the nominal size
            except OSError:
                continue
            files += 1
    return files, size


def listener_pid(port: int) -> int | None:
    """The process listening on TCP `port` on this host (an attached server's, found by its HTTP
    port), or None: none listens, or it belongs to a user whose /proc we cannot read."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{parts[9]}]")
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.listdir(entry / "fd"):
                if os.readlink(entry / "fd" / fd) in inodes:
                    return int(entry.name)
        except OSError:
            continue
    return None
