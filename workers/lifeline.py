"""Child processes of a run (workers, the aggregator, the monitor) stop when the coordinator dies.

Linux's PR_SET_PDEATHSIG delivers SIGTERM to the child when its parent dies, even by SIGKILL, and
SIGTERM is every child's graceful stop: a worker finishes its plans and sends its last records,
the aggregator drains, closes its windows and commits. So a killed coordinator leaves no process
behind, and its store still ends with the run's last windows."""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def stop_with_parent(expected_parent: int | None = None) -> None:
    """Call first thing in the child. `expected_parent`: the parent's pid as the parent saw it;
    when the parent is already gone (the child was reparented before the call), stop at once."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if expected_parent is not None and os.getppid() != expected_parent:
        os.kill(os.getpid(), signal.SIGTERM)
