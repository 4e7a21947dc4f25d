"""Region names carry the run id and the worker id, so a crashed run's leftovers can be found.

A region is named `tee_<run_id>_w<worker>_<n>`; the same string is its /dev/shm file name, its
name on the server, and (with a leading '/') its POSIX key. The run id may not contain '_' or
'/', so a name parses back into exactly one (run id, worker, index).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "tee_"  # every shared-memory object the project creates starts with this
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")
_NAME = re.compile(r"tee_(?P<run_id>[A-Za-z0-9][A-Za-z0-9.-]*)_w(?P<worker_id>[0-9]+)_(?P<index>[0-9]+)")
# POSIX shm names are one path component; Linux allows 255 bytes, keep well clear of it.
MAX_NAME_LENGTH = 200


@dataclass(frozen=True)
class RegionName:
    """The parts of a region name."""

    run_id: str
    worker_id: int
    index: int

    def __str__(self) -> str:
        return region_name(self.run_id, self.worker_id, self.index)


def check_run_id(run_id: str) -> str:
    """`run_id` itself when it can be part of a region name; ValueError saying why not otherwise."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run id {run_id!r}: use letters, digits, '-' and '.' only (no '_' or '/'), "
                         "starting with a letter or digit, e.g. '20261124-223501-ab12'")
    return run_id


def region_name(run_id: str, worker_id: int, index: int) -> str:
    """Name of worker `worker_id`'s `index`-th region in run `run_id`."""
    check_run_id(run_id)
    if worker_id < 0 or index < 0:
        raise ValueError(f"worker id and index must be >= 0, got {worker_id} and {index}")
    name = f"{PREFIX}{run_id}_w{worker_id}_{index}"
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"region name {name!r} is longer than {MAX_NAME_LENGTH} characters")
    return name


HOST_WORKER_ID = 999_999  # the worker id of regions one run shares among all its workers on a host


def host_region_name(run_id: str, index: int = 0) -> str:
    """Name of a region the run shares among its workers on this host (made by the coordinator,
    registered by whichever worker needs it first): a run's cleanup removes it with the rest, a
    dead worker's cleanup leaves it alone."""
    return region_name(run_id, HOST_WORKER_ID, index)


def parse_region_name(name: str) -> RegionName | None:
    """The parts of a region name (a key's leading '/' is allowed), or None when it is not one."""
    match = _NAME.fullmatch(name[1:] if name.startswith("/") else name)
    if match is None:
        return None
    return RegionName(match["run_id"], int(match["worker_id"]), int(match["index"]))


def belongs_to_run(name: str, run_id: str, worker_id: int | None = None) -> bool:
    """Whether `name` (or key) is a region of run `run_id` (and of that worker, when given)."""
    parsed = parse_region_name(name)
    return (parsed is not None and parsed.run_id == run_id
            and (worker_id is None or parsed.worker_id == worker_id))
