"""How every process of a run starts: the coordinator spawns it (`spawn`), and its entry function
sets it up first thing (`enter_process`): its title, its signals, the parent-death signal and the
heap habits of a long-lived process. The coordinator titles itself with `set_process_title`.

Titles read `triton-endurance <run id>: <role>` (roles: coordinator, aggregator, monitor,
`monitor <target>` in a fleet, `worker <n>`), so `ps`, `top` and /proc/<pid>/cmdline say which run
and which part of it a process is, where a spawned child would otherwise show only
`python -c from multiprocessing.spawn import spawn_main ...`.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import TypeVar

# setproctitle rewrites the memory that /proc/<pid>/cmdline shows (what ps and top read); Python
# itself can only name threads.
import setproctitle

from .heap import ReleaseTimer, fix_mmap_threshold, limit_arenas
from .lifeline import stop_with_parent

TITLE_PREFIX = "triton-endurance"
_COMM_CHARS = 15  # the kernel's limit on a task's name (/proc/<pid>/comm)

Spec = TypeVar("Spec")


def process_title(run_id: str, role: str) -> str:
    """`triton-endurance <run id>: <role>`."""
    return f"{TITLE_PREFIX} {run_id}: {role}"


def set_process_title(run_id: str, role: str) -> None:
    """Title this process `triton-endurance <run id>: <role>`. The task name (/proc/<pid>/comm, what
    `ps -o comm`, `top` by default and the kernel's OOM-killer lines show) becomes the role alone,
    cut to the kernel's 15 characters: the common prefix would leave every process the same name."""
    setproctitle.setproctitle(process_title(run_id, role))
    setproctitle.setthreadtitle(role[:_COMM_CHARS])


def enter_process(run_id: str, role: str, *, stop: Callable[[], None] | None = None,
                  stop_on: tuple[signal.Signals, ...] = (), ignore: tuple[signal.Signals, ...] = (),
                  watch: bool = False) -> ReleaseTimer:
    """Set up a spawned process of the run; call first thing in its entry function, before it
    starts a thread (ZeroMQ's I/O thread, gRPC's pollers), since the arena limit holds only for
    threads started after it.

    `stop_on`: the signals that call `stop` (the process's graceful stop); `ignore`: the signals it
    leaves to the coordinator. A process whose event loop installs its own handlers later passes a
    `stop` that notes the request, for the loop to act on once it runs (the worker does). The
    handlers come before the title, so that whoever sees the title may signal the process, and
    before the parent-death signal, which stops the process at once when the coordinator is already
    gone. `watch`: a watch process (aggregator, monitor), whose heap also gets a fixed mmap
    threshold (workers.heap.fix_mmap_threshold says why the workers do not).

    Returns the process's heap ReleaseTimer, for its own loop to tick."""
    if stop_on and stop is None:
        raise ValueError(f"{role}: signals {stop_on} are to stop the process, but no stop was given")
    if stop is not None:
        for sig in stop_on:
            signal.signal(sig, lambda *_: stop())
    for sig in ignore:
        signal.signal(sig, signal.SIG_IGN)
    set_process_title(run_id, role)  # after the handlers: a titled process can be signalled safely
    parent = multiprocessing.parent_process()
    stop_with_parent(parent.pid if parent else None)
    limit_arenas()
    if watch:
        fix_mmap_threshold()
    return ReleaseTimer()


def spawn(target: Callable[[Spec], None], spec: Spec, name: str) -> BaseProcess:
    """Start `target(spec)` in a fresh interpreter and return its process. Spawn, never fork: the
    coordinator's threads and sockets must not be copied into its children. Not daemonic, so the
    child may start processes of its own (a worker's crashing-client scenario does)."""
    process = multiprocessing.get_context("spawn").Process(target=target, args=(spec,), name=name, daemon=False)
    process.start()
    return process
