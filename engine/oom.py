"""Was it the kernel's OOM killer? What the coordinator asks when a process of the run (the server,
a worker) died of SIGKILL (status -9).

An `OomWatch` is made when the load starts. It remembers where the kernel's log is (/dev/kmsg,
opened non-blocking at its end) and its memory cgroup's oom_kill counter (cgroup v2
memory.events, v1 memory.oom_control, of this process's own cgroup: the run's processes are its
children and stay in it). Asked about a pid that just died of SIGKILL, it reads the log's new records
(never blocking, keeping only the few kill records it may be asked about) and answers with an
`OomKill`, or None when it was not the OOM killer.

Sources, best first:
  kmsg            the kernel's own record: "...: Killed process 4321 (tritonserver) total-vm:..kB,
                  anon-rss:..kB, file-rss:..kB, shmem-rss:..kB, ..." (and "oom-kill:...,pid=4321,...")
  cgroup counter  used only where /dev/kmsg cannot be read (not root, dmesg_restrict, a container):
                  the counter says that the kernel killed something of the run, not how much memory
                  it held; each rise is given to one SIGKILL death

An OOM kill is the run's own load not fitting the host: said as such, counted, and at
`OOM_KILLS_TO_STOP` the run stops with that reason.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

KMSG = "/dev/kmsg"
# OOM kills of the run's processes (server, workers) after which the run stops: one may be a
# spike; a second says the configured load does not fit this host, and every later one would
# only restart the same fate.
OOM_KILLS_TO_STOP = 2
RECORD_BUFFER = 16384  # a /dev/kmsg record is at most 8 KiB (CONSOLE_EXT_LOG_MAX); larger: EINVAL
MAX_RECORDS_PER_READ = 100_000  # bounds one drain even if the kernel logs as fast as it is read
KEEP_KILL_RECORDS = 64  # the newest kill records kept for lookup; older ones are dropped
SETTLE_S = 0.2  # the "Killed process" line follows the signal: how long to wait for it
_POLL_S = 0.02

_KILLED = re.compile(r"Killed process (?P<pid>\d+) \((?P<rest>.*)")
_OOM_KILL = re.compile(r"\boom-kill:.*?[:,]task=(?P<comm>[^,]*),pid=(?P<pid>\d+)")
_RSS = re.compile(r"\b(?P<kind>anon|file|shmem)-rss:(?P<kib>\d+)kB")
_GIB = 1 << 30
_MIB = 1 << 20


@dataclass(frozen=True)
class KillRecord:
    """One OOM kill as the kernel logged it (rss in bytes; None where the record does not say)."""

    pid: int
    comm: str  # the kernel's name of the task (at most 15 characters)
    anon_rss: int | None = None
    file_rss: int | None = None
    shmem_rss: int | None = None


def parse_record(record: str) -> KillRecord | None:
    """The OOM kill a /dev/kmsg record ("prio,seq,usec,flags;message\\n KEY=value...") tells of, or
    None. Both the "Killed process" line (with rss) and the earlier "oom-kill:" summary are read."""
    message = record.split(";", 1)[1] if ";" in record.split("\n", 1)[0] else record
    message = message.split("\n", 1)[0]
    if (found := _KILLED.search(message)) is not None:
        rest = found["rest"]
        end = rest.rfind(") total-vm:")  # a task's name may hold ") " itself
        end = rest.find(")") if end < 0 else end
        if end < 0:
            return None
        rss = {m["kind"]: int(m["kib"]) * 1024 for m in _RSS.finditer(rest[end:])}
        return KillRecord(int(found["pid"]), rest[:end], rss.get("anon"), rss.get("file"), rss.get("shmem"))
    if (found := _OOM_KILL.search(message)) is not None:
        return KillRecord(int(found["pid"]), found["comm"])
    return None


class KmsgReader:
    """Records of the kernel log from where it was opened, never blocking. `read(n)` is os.read on
    a /dev/kmsg fd (injectable): one record per call, BlockingIOError when there is none yet,
    EINVAL for a record larger than n (the kernel skips it), EPIPE when records were overwritten
    before they were read (the kernel goes on from the oldest one left)."""

    def __init__(self, read: Callable[[int], bytes], close: Callable[[], None] = lambda: None) -> None:
        self._read = read
        self._close = close
        self.skipped = 0  # records too large for the buffer
        self.overwritten = 0  # times records were lost to the ring buffer

    @classmethod
    def open(cls, path: str = KMSG) -> KmsgReader:
        """At the log's end (only what comes after counts). OSError when it cannot be read here."""
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.lseek(fd, 0, os.SEEK_END)
        except OSError:
            os.close(fd)
            raise
        return cls(partial(os.read, fd), partial(os.close, fd))

    def records(self, limit: int = MAX_RECORDS_PER_READ) -> Iterator[str]:
        """The records logged since the last call. OSError other than EINVAL/EPIPE: unreadable."""
        for _ in range(limit):
            try:
                data = self._read(RECORD_BUFFER)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    self.skipped += 1
                    continue
                if exc.errno == errno.EPIPE:
                    self.overwritten += 1
                    continue
                raise
            if not data:
                return
            yield data.decode("utf-8", "replace")

    def close(self) -> None:
        close, self._close = self._close, lambda: None
        close()


@dataclass(frozen=True)
class CgroupCounter:
    """The oom_kill counter of one memory cgroup: the kills of its own tasks (v2: and of its
    descendants' tasks; v1 counts its own only, which the run's processes are)."""

    path: Path  # memory.events (v2) or memory.oom_control (v1)

    def read(self) -> int | None:
        try:
            text = self.path.read_text()
        except OSError:
            return None
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return None

    @classmethod
    def own(cls, proc: Path = Path("/proc/self")) -> CgroupCounter | None:
        """This process's memory cgroup's counter (v2 first, then v1), or None where it has none."""
        try:
            cgroups = (proc / "cgroup").read_text().splitlines()
            mounts = (proc / "mountinfo").read_text().splitlines()
        except OSError:
            return None
        v2 = v1 = None
        for line in cgroups:
            parts = line.split(":", 2)
            if len(parts) == 3 and parts[0] == "0" and parts[1] == "":
                v2 = parts[2]
            elif len(parts) == 3 and "memory" in parts[1].split(","):
                v1 = parts[2]
        for line in mounts:
            fields, _, tail = line.partition(" - ")
            head, rest = fields.split(), tail.split()
            if len(head) < 5 or len(rest) < 3:
                continue
            root, mountpoint = _unescape(head[3]), _unescape(head[4])
            if rest[0] == "cgroup2" and v2 is not None:
                candidate = _inside(mountpoint, root, v2, "memory.events")
            elif rest[0] == "cgroup" and v1 is not None and "memory" in rest[2].split(","):
                candidate = _inside(mountpoint, root, v1, "memory.oom_control")
            else:
                continue
            if candidate is not None and cls(candidate).read() is not None:
                return cls(candidate)
        return None


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _inside(mountpoint: str, root: str, cgroup: str, name: str) -> Path | None:
    """The file of `cgroup` (a path in the hierarchy) under a mount of the hierarchy's `root`."""
    if root != "/" and cgroup != root and not cgroup.startswith(root.rstrip("/") + "/"):
        return None
    relative = cgroup[len(root):] if root != "/" else cgroup
    return Path(mountpoint) / relative.lstrip("/") / name


@dataclass(frozen=True)
class OomKill:
    """A process of the run killed by the kernel's OOM killer."""

    pid: int
    name: str  # as the run calls it ("tritonserver", "worker 3")
    source: str  # "kmsg" or "cgroup counter"
    comm: str = ""  # the kernel's name of the task ("" from the counter)
    anon_rss: int | None = None  # bytes, from the kernel's record (None from the counter)
    file_rss: int | None = None
    shmem_rss: int | None = None

    def text(self, large_bytes_in_flight: int | None = None) -> str:
        """"<name> (pid N) was killed by the kernel's OOM killer with X GiB of shared memory mapped
        (anon-rss Y GiB)", plus what the engine had in flight when told."""
        said = f"{self.name} (pid {self.pid}) was killed by the kernel's OOM killer"
        if self.shmem_rss is not None:
            said += f" with {_size(self.shmem_rss)} of shared memory mapped"
        if self.anon_rss is not None:
            said += f" (anon-rss {_size(self.anon_rss)})"
        if self.source != "kmsg":
            said += " (its memory cgroup counted the kill; how much memory it held is in the kernel log only)"
        if large_bytes_in_flight is not None:
            said += f" while the engine had {_size(large_bytes_in_flight)} of large inputs in flight"
        return said


def _size(count: int) -> str:
    """GiB with one decimal from 1 GiB on; MiB below, where "0.0 GiB" would hide it."""
    return f"{count / _GIB:.1f} GiB" if count >= _GIB else f"{count / _MIB:.0f} MiB"


def _times(count: int) -> str:
    return {1: "once", 2: "twice"}.get(count, f"{count} times")


class OomWatch:
    """Tells an OOM kill of the run's processes from any other SIGKILL, and counts them."""

    def __init__(self, kmsg: KmsgReader | None, counter: CgroupCounter | None, why_not: str = "",
                 settle_s: float = SETTLE_S) -> None:
        self._kmsg = kmsg
        self._counter = counter
        self.why_not = why_not if kmsg is None else ""  # why the kernel log is not readable here
        self.settle_s = settle_s
        self._counter_seen = counter.read() if counter is not None else None
        self._records: deque[KillRecord] = deque(maxlen=KEEP_KILL_RECORDS)
        self._kills: deque[OomKill] = deque(maxlen=OOM_KILLS_TO_STOP)
        self.kills = 0  # OOM kills of the run's processes said by `explain`

    @classmethod
    def start(cls, kmsg_path: str = KMSG, proc: Path = Path("/proc/self")) -> OomWatch:
        """Now, at the run's start. Never raises: what cannot be read here is said later."""
        try:
            kmsg: KmsgReader | None = KmsgReader.open(kmsg_path)
            why_not = ""
        except OSError as exc:
            kmsg, why_not = None, f"{kmsg_path}: {exc.strerror or exc}"
        return cls(kmsg, CgroupCounter.own(proc), why_not)

    def check(self, pid: int, name: str) -> OomKill | None:
        """Was the process `pid` (just dead of SIGKILL) killed by the kernel's OOM killer?"""
        until = time.monotonic() + self.settle_s
        while self._kmsg is not None:
            self._drain()
            record = self._take(pid)
            if record is not None:
                self._counter_seen = self._counter.read() if self._counter is not None else None
                return OomKill(pid, name, "kmsg", record.comm, record.anon_rss, record.file_rss, record.shmem_rss)
            if time.monotonic() >= until:
                self._counter_seen = self._counter.read() if self._counter is not None else None
                return None
            time.sleep(_POLL_S)
        if self._counter is None or self._counter_seen is None:
            return None
        now = self._counter.read()
        if now is None or now <= self._counter_seen:
            return None
        self._counter_seen += 1  # one rise per death it explains
        return OomKill(pid, name, "cgroup counter")

    def explain(self, pid: int, name: str, large_bytes_in_flight: Callable[[], int] | None = None) -> str:
        """What to add to "... exited (status -9)": the OOM kill (counted), the reason it cannot be
        told here, or "" for a plain SIGKILL."""
        kill = self.check(pid, name)
        if kill is None:
            if self._kmsg is not None:
                return ""
            if self._counter_seen is not None:
                return (f"killed by SIGKILL, not by the kernel's OOM killer (its memory cgroup counted no OOM kill; "
                        f"the kernel's record is not readable here: {self.why_not})")
            return f"killed by SIGKILL; the kernel's record is not readable here: {self.why_not}"
        self.kills += 1
        self._kills.append(kill)
        large = None
        if large_bytes_in_flight is not None:
            try:
                large = int(large_bytes_in_flight())
            except Exception:  # a hook's failure must not cost the incident
                large = None
        return kill.text(large)

    @property
    def stops_run(self) -> bool:
        return self.kills >= OOM_KILLS_TO_STOP

    def stop_text(self) -> str:
        """The incident that stops the run once `stops_run`."""
        who = ", ".join(f"{k.name} pid {k.pid}" for k in self._kills)
        return (f"processes of the run ({who}) were killed by the kernel's OOM killer {_times(self.kills)}: "
                "the run's own load does not fit this host; the run stops")

    def close(self) -> None:
        if self._kmsg is not None:
            self._kmsg.close()
            self._kmsg = None
            self.why_not = "the watch is closed"

    def _drain(self) -> None:
        assert self._kmsg is not None
        try:
            for record in self._kmsg.records():
                kill = parse_record(record)
                if kill is not None:
                    self._keep(kill)
        except OSError as exc:  # the log went away under us: the counter is what is left
            self._kmsg.close()
            self._kmsg, self.why_not = None, f"{KMSG}: {exc.strerror or exc}"

    def _keep(self, kill: KillRecord) -> None:
        """The "Killed process" line (with rss) completes the "oom-kill:" summary before it."""
        if self._records and self._records[-1].pid == kill.pid and self._records[-1].anon_rss is None:
            self._records.pop()
        self._records.append(kill)

    def _take(self, pid: int) -> KillRecord | None:
        for record in reversed(self._records):
            if record.pid == pid:
                self._records.remove(record)  # said once: a later process with this pid is not it
                return record
        return None


__all__ = ["OOM_KILLS_TO_STOP", "CgroupCounter", "KillRecord", "KmsgReader", "OomKill", "OomWatch", "parse_record"]
