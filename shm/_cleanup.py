"""Remove what a run left behind: regions registered on the server and objects in /dev/shm.

A killed worker cannot unregister or unlink its regions. The server keeps them mapped (and a
CUDA region's IPC mapping open) until they are unregistered, and /dev/shm keeps the memory until
the names are unlinked. Region names carry the run id (see _naming), so one pass finds them all.
Call it when the run's workers are gone (or with `worker_id`, for one dead worker): it also
removes the regions of live pools of that run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._errors import ShmError
from ._naming import belongs_to_run, is_worker_region
from ._registration import KINDS, SYSTEM, registered_regions, unregister
from ._system import SHM_DIR


@dataclass(frozen=True)
class CleanupReport:
    """What a cleanup pass removed, and what it could not."""

    unregistered_system: tuple[str, ...] = ()  # region names unregistered from the server
    unregistered_cuda: tuple[str, ...] = ()
    unlinked: tuple[str, ...] = ()  # /dev/shm entries removed
    errors: tuple[str, ...] = ()  # what could not be done, and why

    @property
    def unregistered(self) -> tuple[str, ...]:
        return self.unregistered_system + self.unregistered_cuda

    @property
    def removed_anything(self) -> bool:
        return bool(self.unregistered or self.unlinked)


def cleanup(run_id: str, client: Any = None, *, worker_id: int | None = None,
            shm_dir: str = SHM_DIR) -> CleanupReport:
    """Unregister from the server (when a sync tritonclient `client` is given) every system and CUDA
    region of run `run_id` (of one worker, when `worker_id` is given), and unlink its /dev/shm
    objects. Other runs' regions, and the server's own python-backend regions, are left alone."""
    return _cleanup(lambda name: belongs_to_run(name, run_id, worker_id), client, shm_dir)


def cleanup_all_runs(client: Any = None, *, shm_dir: str = SHM_DIR) -> CleanupReport:
    """The same for every run's regions (every name of the form tee_<run>_w<n>_<n>). Only safe when
    no run is going on against this server or on this host."""
    return _cleanup(is_worker_region, client, shm_dir)


def _cleanup(matches: Callable[[str], bool], client: Any, shm_dir: str) -> CleanupReport:
    unregistered: dict[str, list[str]] = {kind: [] for kind in KINDS}
    errors: list[str] = []
    if client is not None:
        for kind in KINDS:
            try:
                regions = registered_regions(client, kind)
            except ShmError as exc:  # e.g. a server without CUDA shared memory support
                errors.append(f"{kind} status: {exc}")
                continue
            for region in regions:
                # A region is ours by its name, or (system) by its key under any name.
                if not (matches(region.name) or (region.key and matches(region.key))):
                    continue
                try:
                    unregister(client, region.name, kind)
                    unregistered[kind].append(region.name)
                except ShmError as exc:
                    errors.append(f"unregister {kind} region {region.name!r}: {exc}")
    unlinked: list[str] = []
    try:
        entries = sorted(os.listdir(shm_dir))
    except OSError as exc:
        entries = []
        errors.append(f"list {shm_dir}: {exc}")
    for entry in entries:
        if not matches(entry):
            continue
        try:
            os.unlink(os.path.join(shm_dir, entry))
            unlinked.append(entry)
        except FileNotFoundError:
            pass  # gone meanwhile (its owner closed it)
        except OSError as exc:
            errors.append(f"unlink {entry}: {exc}")
    return CleanupReport(tuple(unregistered[SYSTEM]), tuple(unregistered["cuda"]), tuple(unlinked), tuple(errors))
