"""engine.oom: an OOM kill told apart from any other SIGKILL.

The kernel's record shapes and the reader's EINVAL/EPIPE handling on a fake /dev/kmsg; then real
kills on this host: a plain SIGKILL gives nothing, and a stand-in process inside a 64 MiB memory
cgroup that touches 512 MiB is killed by the kernel's OOM killer and named so, with its pid, from
the kernel log and from the cgroup's oom_kill counter.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.oom import (
    KEEP_KILL_RECORDS,
    OOM_KILLS_TO_STOP,
    CgroupCounter,
    KillRecord,
    KmsgReader,
    OomWatch,
    parse_record,
)

pytestmark = pytest.mark.timeout(120)

# Records as this host's kernel (6.18) writes them to /dev/kmsg for a memory-cgroup OOM kill.
MEMCG_SUMMARY = ("6,415,426357707,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
                 "oom_memcg=/oomtry_6043,task_memcg=/oomtry_6043,task=python,pid=6044,uid=0\n")
MEMCG_KILLED = ("3,416,426357729,-;Memory cgroup out of memory: Killed process 6044 (python) total-vm:538292kB, "
                "anon-rss:68736kB, file-rss:6036kB, shmem-rss:0kB, UID:0 pgtables:200kB oom_score_adj:0\n")
# A global OOM kill of the server, with its shared memory (and a continuation line, as records may carry).
GLOBAL_KILLED = ("3,1234,5678,-;Out of memory: Killed process 4321 (tritonserver) total-vm:12345678kB, "
                 "anon-rss:1153434kB, file-rss:10240kB, shmem-rss:8808038kB, UID:0 pgtables:20480kB "
                 "oom_score_adj:0\n SUBSYSTEM=memory\n")
GLOBAL_SUMMARY = ("6,1233,5677,-;oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,"
                  "global_oom,task_memcg=/,task=tritonserver,pid=4321,uid=0\n")
# Kernels before 4.5 had no shmem-rss; the "Kill process ... or sacrifice child" line came first.
OLD_KILLED = "3,77,99,-;Killed process 999 (python3) total-vm:1000kB, anon-rss:800kB, file-rss:4kB\n"
OLD_CHOSEN = "3,76,98,-;Out of memory: Kill process 999 (python3) score 901 or sacrifice child\n"
REAPED = "6,417,426360000,-;oom_reaper: reaped process 6044 (python), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB\n"


class FakeKmsg:
    """os.read on /dev/kmsg as a script: bytes, or an exception to raise; then EAGAIN forever."""

    def __init__(self, *steps: str | BaseException) -> None:
        self.steps = list(steps)
        self.closed = False
        self.sizes: list[int] = []

    def push(self, *steps: str | BaseException) -> None:
        self.steps.extend(steps)

    def read(self, size: int) -> bytes:
        self.sizes.append(size)
        if not self.steps:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step.encode()

    def close(self) -> None:
        self.closed = True


def _watch(fake: FakeKmsg, counter: CgroupCounter | None = None) -> OomWatch:
    return OomWatch(KmsgReader(fake.read, fake.close), counter, settle_s=0.0)


# -- the kernel's records ------------------------------------------------------------------
def test_records_of_an_oom_kill_are_read_in_every_shape() -> None:
    assert parse_record(MEMCG_KILLED) == KillRecord(6044, "python", 68736 * 1024, 6036 * 1024, 0)
    assert parse_record(MEMCG_SUMMARY) == KillRecord(6044, "python")
    assert parse_record(GLOBAL_KILLED) == KillRecord(4321, "tritonserver", 1153434 * 1024, 10240 * 1024, 8808038 * 1024)
    assert parse_record(GLOBAL_SUMMARY) == KillRecord(4321, "tritonserver")
    assert parse_record(OLD_KILLED) == KillRecord(999, "python3", 800 * 1024, 4 * 1024, None)
    odd = "3,1,2,-;Out of memory: Killed process 77 (a (b) c) total-vm:1kB, anon-rss:2kB, file-rss:3kB, shmem-rss:4kB\n"
    assert parse_record(odd) == KillRecord(77, "a (b) c", 2048, 3072, 4096)
    for other in (OLD_CHOSEN, REAPED, "6,338,1364840,-;EXT4-fs (vda): mounted filesystem\n",
                  "4,339,426349970,-;python invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0\n", ""):
        assert parse_record(other) is None, other


def test_reader_skips_oversized_records_and_goes_on_after_overwritten_ones() -> None:
    fake = FakeKmsg(MEMCG_SUMMARY, OSError(errno.EINVAL, "Invalid argument"), OSError(errno.EPIPE, "Broken pipe"),
                    MEMCG_KILLED)
    reader = KmsgReader(fake.read, fake.close)
    assert list(reader.records()) == [MEMCG_SUMMARY, MEMCG_KILLED]
    assert (reader.skipped, reader.overwritten) == (1, 1)
    assert list(reader.records()) == []  # EAGAIN: nothing new, and no wait for it
    assert set(fake.sizes) == {16384}
    fake.push(*[OSError(errno.EINVAL, "Invalid argument")] * 10)
    assert list(reader.records(limit=5)) == []  # bounded even if every read fails
    reader.close()
    reader.close()
    assert fake.closed


def test_an_unreadable_log_stops_the_reader_and_is_said() -> None:
    fake = FakeKmsg(OSError(errno.EIO, "Input/output error"))
    watch = _watch(fake)
    assert watch.check(4321, "tritonserver") is None
    assert fake.closed and watch.why_not == "/dev/kmsg: Input/output error"
    assert watch.explain(4321, "tritonserver") == \
        "killed by SIGKILL; the kernel's record is not readable here: /dev/kmsg: Input/output error"


def test_the_watch_names_the_kill_of_a_pid_from_the_log() -> None:
    fake = FakeKmsg(GLOBAL_SUMMARY, GLOBAL_KILLED, MEMCG_SUMMARY)
    watch = _watch(fake)
    kill = watch.check(4321, "tritonserver")
    assert kill is not None and kill.source == "kmsg" and kill.comm == "tritonserver"
    assert kill.text() == ("tritonserver (pid 4321) was killed by the kernel's OOM killer with 8.4 GiB of shared "
                           "memory mapped (anon-rss 1.1 GiB)")
    assert kill.text(3 << 30).endswith(" while the engine had 3.0 GiB of large inputs in flight")
    assert watch.check(4321, "tritonserver") is None  # told once: a later process with that pid is not it
    assert watch.check(1, "init") is None  # no record of it: a plain SIGKILL
    # Only the summary line of 6044 arrived: still an OOM kill, without the sizes.
    only = watch.check(6044, "worker 0")
    assert only is not None and only.anon_rss is None
    assert only.text() == "worker 0 (pid 6044) was killed by the kernel's OOM killer"
    assert watch.kills == 0  # check() only looks; explain() counts


def test_two_oom_kills_stop_the_run_and_the_hook_is_said() -> None:
    fake = FakeKmsg(MEMCG_SUMMARY, MEMCG_KILLED)
    watch = _watch(fake)
    said = watch.explain(6044, "worker 2", lambda: 5 << 29)
    assert said == ("worker 2 (pid 6044) was killed by the kernel's OOM killer with 0 MiB of shared memory mapped "
                    "(anon-rss 67 MiB) while the engine had 2.5 GiB of large inputs in flight")
    assert watch.kills == 1 and not watch.stops_run
    assert watch.explain(5555, "worker 3") == ""  # a plain SIGKILL: nothing to add, not counted
    fake.push(GLOBAL_KILLED)

    def broken() -> int:
        raise RuntimeError("hook failed")

    assert watch.explain(4321, "tritonserver", broken).endswith("(anon-rss 1.1 GiB)")  # a failing hook costs nothing
    assert OOM_KILLS_TO_STOP == 2 and watch.kills == 2 and watch.stops_run
    assert watch.stop_text() == ("processes of the run (worker 2 pid 6044, tritonserver pid 4321) were killed by the "
                                 "kernel's OOM killer twice: the run's own load does not fit this host; the run stops")


def test_the_watch_keeps_only_the_newest_kill_records() -> None:
    fake = FakeKmsg(*[f"3,{i},{i},-;Out of memory: Killed process {100000 + i} (x) anon-rss:1kB, file-rss:0kB, "
                      f"shmem-rss:0kB\n" for i in range(10 * KEEP_KILL_RECORDS)])
    watch = _watch(fake)
    assert watch.check(100000, "first") is None  # long dropped
    assert len(watch._records) == KEEP_KILL_RECORDS
    assert watch.check(100000 + 10 * KEEP_KILL_RECORDS - 1, "last") is not None


# -- the cgroup counter, where the log cannot be read ----------------------------------------
def _fake_proc(tmp_path: Path, cgroup_lines: str, mount_line: str) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup_lines)
    (proc / "mountinfo").write_text(mount_line)
    return proc


def test_the_counter_of_this_process_cgroup_is_found_v1_and_v2(tmp_path: Path) -> None:
    v1 = tmp_path / "memory mnt" / "process_api" / "abc"
    v1.mkdir(parents=True)
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 7\n")
    proc = _fake_proc(tmp_path, "4:memory:/process_api/abc\n0::/\n",
                      f"36 35 0:31 / {str(tmp_path / 'memory mnt').replace(' ', chr(92) + '040')} rw,relatime "
                      "shared:9 - cgroup cgroup rw,memory\n")
    counter = CgroupCounter.own(proc)
    assert counter is not None and counter.path == v1 / "memory.oom_control" and counter.read() == 7

    v2 = tmp_path / "cg2" / "user.slice" / "run.scope"  # a namespaced mount: its root is /user.slice
    v2.mkdir(parents=True)
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n")
    (tmp_path / "proc").rename(tmp_path / "old")
    proc = _fake_proc(tmp_path, "0::/user.slice/run.scope\n",
                      f"30 20 0:26 /user.slice {tmp_path / 'cg2' / 'user.slice'} rw - cgroup2 cgroup2 rw\n")
    counter = CgroupCounter.own(proc)
    assert counter is not None and counter.path == v2 / "memory.events" and counter.read() == 2

    (tmp_path / "proc").rename(tmp_path / "older")
    assert CgroupCounter.own(_fake_proc(tmp_path, "0::/\n", "")) is None  # no memory controller


def test_without_the_log_each_counter_rise_explains_one_sigkill(tmp_path: Path) -> None:
    events = tmp_path / "memory.events"
    events.write_text("oom 0\noom_kill 1\n")
    watch = OomWatch.start(kmsg_path=str(tmp_path / "kmsg"), proc=tmp_path / "no-proc")
    assert watch.why_not == f"{tmp_path / 'kmsg'}: No such file or directory"
    assert watch.explain(10, "worker 0") == \
        f"killed by SIGKILL; the kernel's record is not readable here: {watch.why_not}"

    watch = OomWatch(None, CgroupCounter(events), why_not="/dev/kmsg: Operation not permitted")
    assert watch.explain(11, "worker 1") == ("killed by SIGKILL, not by the kernel's OOM killer (its memory cgroup "
                                             "counted no OOM kill; the kernel's record is not readable here: "
                                             "/dev/kmsg: Operation not permitted)")
    events.write_text("oom 2\noom_kill 3\n")
    first, second = watch.check(12, "worker 2"), watch.check(13, "tritonserver")
    assert first is not None and second is not None and watch.check(14, "worker 4") is None
    assert first.source == "cgroup counter" and first.anon_rss is None
    assert second.text().startswith("tritonserver (pid 13) was killed by the kernel's OOM killer (its memory cgroup")


# -- real kills on this host -------------------------------------------------------------------
def _kmsg_readable() -> None:
    try:
        os.close(os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK))
    except OSError as exc:
        pytest.skip(f"/dev/kmsg is not readable here ({exc.strerror}): the kernel's record of a kill cannot be seen")


def test_a_plain_sigkill_is_not_an_oom_kill() -> None:
    _kmsg_readable()
    watch = OomWatch.start()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
        assert watch.check(child.pid, "stand-in") is None
        assert watch.explain(child.pid, "stand-in") == "" and watch.kills == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        watch.close()


def test_this_process_cgroup_counter_is_found_here() -> None:
    counter = CgroupCounter.own()
    if counter is None:
        lines = "; ".join(Path("/proc/self/cgroup").read_text().splitlines())
        pytest.skip(f"no oom_kill counter is readable for this process's memory cgroup (/proc/self/cgroup: {lines})")
    assert counter.path.name in ("memory.oom_control", "memory.events") and isinstance(counter.read(), int)


def _limited_cgroup(name: str) -> Path:
    """A new memory cgroup of 64 MiB without swap, under this process's own where it can be made."""
    if os.geteuid() != 0:
        pytest.skip(f"not root (uid {os.geteuid()}): a memory-limited cgroup cannot be made here")
    own = CgroupCounter.own()
    places: list[Path] = []
    if own is not None and own.path.name == "memory.oom_control":
        places.append(own.path.parent)
    v1_root = Path("/sys/fs/cgroup/memory")
    if (v1_root / "memory.limit_in_bytes").exists():
        places.append(v1_root)
    if own is not None and own.path.name == "memory.events" \
            and "memory" in (own.path.parent / "cgroup.subtree_control").read_text().split():
        places.append(own.path.parent)
    if not places:
        pytest.skip("no memory cgroup can be made here: no cgroup v1 memory hierarchy at /sys/fs/cgroup/memory, and "
                    "this process's cgroup v2 group does not delegate the memory controller")
    errors = []
    for parent in places:
        path = parent / name
        try:
            path.mkdir()
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror}")
            continue
        try:
            if (path / "memory.limit_in_bytes").exists():  # v1
                (path / "memory.limit_in_bytes").write_text(str(64 << 20))
                if (path / "memory.memsw.limit_in_bytes").exists():
                    (path / "memory.memsw.limit_in_bytes").write_text(str(64 << 20))
                else:
                    (path / "memory.swappiness").write_text("0")
            else:  # v2
                (path / "memory.max").write_text(str(64 << 20))
                if (path / "memory.swap.max").exists():
                    (path / "memory.swap.max").write_text("0")
        except OSError as exc:
            path.rmdir()
            errors.append(f"{path}: {exc.strerror}")
            continue
        return path
    pytest.skip(f"no memory cgroup can be made here: {'; '.join(errors)}")


def _remove_cgroup(path: Path) -> None:
    until = time.monotonic() + 10.0
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # EBUSY for a moment after its last task exits
            if time.monotonic() > until:
                raise
            time.sleep(0.1)


@pytest.fixture
def limited_cgroup() -> Iterator[Path]:
    path = _limited_cgroup(f"tee_oomtest_{os.getpid()}_{time.monotonic_ns()}")
    try:
        yield path
    finally:
        _remove_cgroup(path)


def test_a_real_oom_kill_is_named_with_its_pid(limited_cgroup: Path) -> None:
    _kmsg_readable()
    path = limited_cgroup
    watch = OomWatch.start()
    events = path / ("memory.oom_control" if (path / "memory.oom_control").exists() else "memory.events")
    counter_only = OomWatch(None, CgroupCounter(events), why_not="left out by the test", settle_s=0.0)
    assert counter_only.check(os.getpid(), "nothing yet") is None
    # Waits for a byte on stdin (so it is in the cgroup first), then allocates and touches 512 MiB.
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read(1); b = b'x' * (512 << 20); "
                              "print('survived', len(b))"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        (path / "cgroup.procs").write_text(str(child.pid))
        out, _ = child.communicate(b"x", timeout=60)
        assert child.returncode == -signal.SIGKILL, (child.returncode, out)
        said = watch.explain(child.pid, "stand-in")
        assert said.startswith(f"stand-in (pid {child.pid}) was killed by the kernel's OOM killer with "), said
        assert " of shared memory mapped (anon-rss " in said, said  # the sizes come from the kernel's record
        assert watch.kills == 1
        kill = counter_only.check(child.pid, "stand-in")  # where the log cannot be read: the cgroup's counter
        assert kill is not None and kill.source == "cgroup counter"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        watch.close()
