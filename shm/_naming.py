"""Region names carry the run id and the worker id, so a crashed run's leftovers can be found."""

from __future__ import annotations

PREFIX = "tee_"  # every shared-memory object the project creates starts with this


def region_name(run_id: str, worker_id: int, index: int) -> str:
    """Name of a worker's index-th region; also its /dev/shm file name and (with '/') its key."""
    return f"{PREFIX}{run_id}_w{worker_id}_{index}"


def run_prefix(run_id: str) -> str:
    return f"{PREFIX}{run_id}_"


def belongs_to_run(name: str, run_id: str) -> bool:
    return name.lstrip("/").startswith(run_prefix(run_id))
