"""Every name the project gives a shared-memory object, built and recognised here alone.

A worker's region is named `tee_<run_id>_w<worker>_<n>`; the same string is its /dev/shm file
name, its name on the server, and (with a leading '/') its POSIX key. The run id may not contain
'_' or '/', so a name parses back into exactly one (run id, worker, index).

A server the engine launches names its python backend's regions with a prefix of ours, so a
killed run's server leaves nothing a cleanup cannot find: `tee<run id without '-'>_` for a run's
server, `tee_srv<pid>_<token>_` for one launched outside a run (tests, benchmarks). Neither
parses as a worker's region, so a worker cleanup never takes a live server's regions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROOT = "tee"  # every shared-memory object the project creates starts with this
PREFIX = "tee_"  # the workers' regions, and the servers launched outside a run
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")
_RUN_SERVER = re.compile(ROOT + r"[A-Za-z0-9.]+_")  # what server_region_prefix gives, for any run
_NAME = re.compile(PREFIX + r"(?P<run_id>[A-Za-z0-9][A-Za-z0-9.-]*)_w(?P<worker_id>[0-9]+)_(?P<index>[0-9]+)")
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


def worker_region_prefix(run_id: str) -> str:
    """What every region of run `run_id`'s workers starts with."""
    return f"{PREFIX}{run_id}_"


def server_region_prefix(run_id: str) -> str:
    """Prefix of the python backend's regions of a server run `run_id` launches: not "tee_", so
    they are never taken for the workers' regions."""
    return f"{ROOT}{run_id.replace('-', '')}_"


def run_region_prefixes(run_id: str) -> tuple[str, str]:
    """What every /dev/shm object of run `run_id` starts with: its workers' regions, its server's."""
    return worker_region_prefix(run_id), server_region_prefix(run_id)


def standalone_server_region_prefix(pid: int, token: str = "") -> str:
    """Prefix of the python backend's regions of a server that process `pid` launches outside a
    run; `token` tells apart the servers of one process. Without one: the prefix of them all."""
    return f"{PREFIX}srv{pid}_{token}_" if token else f"{PREFIX}srv{pid}_"


def region_name(run_id: str, worker_id: int, index: int) -> str:
    """Name of worker `worker_id`'s `index`-th region in run `run_id`."""
    check_run_id(run_id)
    if worker_id < 0 or index < 0:
        raise ValueError(f"worker id and index must be >= 0, got {worker_id} and {index}")
    name = f"{worker_region_prefix(run_id)}w{worker_id}_{index}"
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


def is_worker_region(name: str) -> bool:
    """Whether `name` (or key) is a worker's region, of any run."""
    return parse_region_name(name) is not None


def is_server_region(name: str, run_id: str | None = None) -> bool:
    """Whether `name` is a python-backend region of a server that run `run_id` launched (that any
    run launched, when None). A server launched outside a run is not one: its owner removes them."""
    if run_id is not None:
        return name.startswith(server_region_prefix(run_id))
    return _RUN_SERVER.match(name) is not None
