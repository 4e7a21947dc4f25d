"""Keep a run's processes from importing the caller's script.

A run starts its aggregator, monitors and workers with multiprocessing's spawn method, which
imports the parent's `__main__` module again in every child, so that functions defined there
can be unpickled. A script that calls `engine.run` at its top level, without an
`if __name__ == "__main__":` guard, would start the run again in each child. The run's children
need nothing from the caller's script (their targets and specs are the engine's own), so while a
run goes on the script is not named to them: `__main__` shows neither a file nor a module spec,
as in an interactive session, and spawn leaves it alone.

`sys.modules["__main__"]` belongs to the whole process, so runs in several threads at once share
one hiding, counted under a lock, and the last to end puts the names back."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

_NAMES = ("__file__", "__spec__")


class _Hiding:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs = 0  # runs that hide it now
        self.saved: dict[str, object] = {}  # the names hidden, while they do


_HIDING = _Hiding()


@contextlib.contextmanager
def main_module_hidden() -> Iterator[None]:
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    with _HIDING.lock:
        if _HIDING.runs == 0:
            _HIDING.saved = {name: main.__dict__[name] for name in _NAMES if name in main.__dict__}
            main.__dict__.pop("__file__", None)
            main.__spec__ = None
        _HIDING.runs += 1
    try:
        yield
    finally:
        with _HIDING.lock:
            _HIDING.runs -= 1
            if _HIDING.runs == 0:
                main.__dict__.update(_HIDING.saved)
                _HIDING.saved = {}
