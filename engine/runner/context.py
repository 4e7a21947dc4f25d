"""What the parts of a run share: made before the servers start, filled in as the run sets up,
read by every part afterwards."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from model_repo_gen import ModelSpec
from workers.user_load import ResolvedLoad

from ..cluster.backend import WorkerBackend
from ..cluster.keys import RunKeys
from ..cluster.targets import Target
from ..config import Config
from ..detectors.settings import DetectorSettings
from ..memory_budget import HostSide
from ..oom import OomWatch
from ..run_setup import RunPaths

MAX_SOCKET_PATH = 108  # sun_path of a unix socket address on Linux
Say = Callable[[str], None]  # where the run's lines go (stdout for the CLI, a logger or a callback for a library)
Clock = Callable[[], float]  # monotonic seconds


@dataclass
class RunContext:
    config: Config
    paths: RunPaths
    settings: DetectorSettings
    say: Say
    # The coordinator's own waits and deadlines; the aggregator and the workers keep the host's
    # monotonic clock, so a run always uses the default (tests of the parts may pass their own).
    clock: Clock = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    models: tuple[ModelSpec, ...] = ()  # the generated models
    user_loads: tuple[ResolvedLoad, ...] = ()  # the config's [[load]] entries, resolved against the server
    targets: list[Target] = field(default_factory=list)
    backend: WorkerBackend | None = None
    keys: RunKeys | None = None  # CURVE keys of this run (Ray only: telemetry leaves the host)
    host: HostSide | None = None  # the memory budget's objects on this host
    oom: OomWatch | None = None  # tells an OOM kill of the server or a worker from other SIGKILLs
    load_started: float = 0.0  # clock() when the load began; 0 before

    @property
    def store_path(self) -> Path:
        return self.paths.root / "run.sqlite"

    @property
    def telemetry_endpoint(self) -> str:
        """Where this host's senders reach the aggregator: a socket in the run directory, or in the
        temporary directory where the run directory's path is too long for a unix socket (108
        bytes on Linux, the terminating NUL included)."""
        path = f"{self.paths.root}/telemetry.sock"
        if len(path.encode()) >= MAX_SOCKET_PATH:
            path = f"{tempfile.gettempdir()}/tee-{self.paths.run_id}.sock"
        return f"ipc://{path}"

    @property
    def remote(self) -> bool:
        """Telemetry comes from other hosts (Ray): senders use the backend's endpoint and keys."""
        return bool(self.backend is not None and self.backend.remote_endpoint)

    def elapsed(self) -> float:
        """Seconds since the load began (0 before)."""
        return self.clock() - self.load_started if self.load_started else 0.0

    def of(self, index: int) -> str:
        """" of server <name>" in a fleet, "" with one server: incidents read the same either way."""
        name = self.targets[index].name
        return f" of server {name}" if name else ""

    def large_bytes_in_flight(self) -> int:
        """Bytes of large inputs the engine has in flight now, said with an OOM kill."""
        return self.host.in_flight_bytes() if self.host is not None else 0
