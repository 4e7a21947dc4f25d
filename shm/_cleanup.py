"""Remove what a crashed run left: regions registered on the server and objects in /dev/shm."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ._naming import PREFIX, belongs_to_run
from ._registration import registered_regions, unregister
from ._system import SHM_DIR


@dataclass(frozen=True)
class CleanupReport:
    unregistered: tuple[str, ...]  # names unregistered from the server
    unlinked: tuple[str, ...]  # /dev/shm entries removed


def cleanup(run_id: str, client: Any = None) -> CleanupReport:
    """Unregister the run's regions from the server (when a client is given) and unlink its
    /dev/shm objects. Regions of other runs are left alone."""
    return _cleanup(lambda name: belongs_to_run(name, run_id), client)


def cleanup_all_runs(client: Any = None) -> CleanupReport:
    """The same for every run's leftovers (every name with the project's prefix). Only safe when
    no run is going on against this server or on this host."""
    return _cleanup(lambda name: name.lstrip("/").startswith(PREFIX), client)


def _cleanup(matches, client: Any) -> CleanupReport:
    unregistered: list[str] = []
    if client is not None:
        for cuda in (False, True):
            try:
                regions = registered_regions(client, cuda=cuda)
            except Exception:  # a server without the CUDA extension: nothing of that kind to remove
                continue
            for name, status in regions.items():
                key = str(status.get("key", "")) if isinstance(status, dict) else ""
                if matches(name) or (key and matches(key)):
                    unregister(client, name, cuda=cuda)
                    unregistered.append(name)
    unlinked: list[str] = []
    for entry in sorted(os.listdir(SHM_DIR)):
        if matches(entry):
            try:
                os.unlink(os.path.join(SHM_DIR, entry))
                unlinked.append(entry)
            except FileNotFoundError:
                pass
    return CleanupReport(tuple(unregistered), tuple(unlinked))
