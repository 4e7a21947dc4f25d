"""Launch a tritonserver process, wait until it serves, and stop it leaving nothing behind."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import re
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from shm import standalone_server_region_prefix

from ._bundled import ServerSetupError, locate_bundled, make_backend_dir, stub_environment
from ._handle import ServerEndpoints, StubProcess, find_stub_processes
from ._health import is_ready
from ._ports import free_ports

_PR_SET_PDEATHSIG = 1
_PORT_RETRIES = 3
_ADDRESS_IN_USE = ("Address already in use", "address in use", "Failed to start")
# The python backend's own directory, /tmp/python_env_XXXXXX (a fixed path, not TMPDIR), made when
# it starts and removed only when the server exits cleanly: a killed server leaves it behind.
_PYTHON_ENV_DIR = "python_env_*"


def _python_env_dirs() -> set[Path]:
    return set(Path("/tmp").glob(_PYTHON_ENV_DIR))


@dataclass(frozen=True)
class LaunchOptions:
    """How to start a server. Ports of 0 are picked free; `binary=None` means the bundled one."""

    repository: Path
    work_dir: Path  # backend directory and log go here
    binary: Path | None = None
    host: str = "127.0.0.1"
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    startup_timeout: float = 120.0
    stop_timeout: float = 30.0
    extra_args: tuple[str, ...] = ()
    extra_repositories: tuple[Path, ...] = ()  # served beside `repository` (a user's own models)
    # Prefix of the python backend's own /dev/shm regions, so a crashed run's leftovers can be found
    # and removed at stop. "" = unique to this launch; it must not be shared with a live server.
    shm_prefix: str = ""
    log_name: str = "tritonserver.log"
    env: tuple[tuple[str, str], ...] = field(default=())


def _die_with_parent() -> None:
    """In the child before exec: own session (a terminal's ^C reaches the engine, which stops the
    server in order) and SIGTERM when the engine dies, so a killed engine leaves no server."""
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# Error lines that every CPU-only start prints and that say nothing about the failure.
_HARMLESS = ("CudaDriverHelper has not been initialized", "Failed to initialize NVML", "DCGM unable to start",
             "Unable to allocate pinned system memory")
_ERROR_LINE = re.compile(r"^E\d{4} ")


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no server log)"
    return "\n".join(text[-lines:]) or "(server log is empty)"


def _failure_summary(path: Path) -> str:
    """The server's own error lines (model load failures and the like), then its last words.

    A plain tail is mostly the options table printed at exit; the E-lines say what went wrong."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no server log)"
    errors = [line[:600] for line in text if _ERROR_LINE.match(line) and not any(h in line for h in _HARMLESS)]
    last = [line for line in text[-3:] if line.strip() and not line.startswith(("+", "|"))]
    return "\n".join([*errors[-8:], *last]) or _log_tail(path)


class LaunchedServer:
    """A tritonserver this process started. Use as a context manager, or call `stop()`.

    Launch it from a thread that outlives it: the kernel's parent-death signal fires when the
    launching *thread* exits.
    """

    def __init__(self, options: LaunchOptions) -> None:
        if not options.shm_prefix:
            prefix = standalone_server_region_prefix(os.getpid(), secrets.token_hex(3))
            options = dataclasses.replace(options, shm_prefix=prefix)
        self.options = options
        self.log_path = options.work_dir / options.log_name
        self._process: subprocess.Popen[bytes] | None = None
        self._known_stubs: dict[int, StubProcess] = {}
        self.endpoints = ServerEndpoints(http="", grpc="", metrics="")
        self.started_at = 0.0  # monotonic seconds when the server became ready
        self._env_before: set[Path] = set()  # the python backend's directories before our start
        self._env_dirs: set[Path] = set()  # the one our server made (_own_python_env_dir)
        self._env_known = False  # _env_dirs worked out for the process started last

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> LaunchedServer:
        opts = self.options
        opts.work_dir.mkdir(parents=True, exist_ok=True)
        if not opts.repository.is_dir():
            raise ServerSetupError(f"model repository {opts.repository} is not a directory")
        pick_ports = not (opts.http_port and opts.grpc_port and opts.metrics_port)
        for attempt in range(1, _PORT_RETRIES + 1):
            try:
                self._start_once()
                return self
            except _PortTaken:
                if not pick_ports or attempt == _PORT_RETRIES:
                    raise ServerSetupError(
                        f"tritonserver could not bind its ports ({self.endpoints}):\n{_failure_summary(self.log_path)}"
                    ) from None
        return self

    def restart(self, port_wait_s: float = 30.0) -> LaunchedServer:
        """Start again after the server died (or was stopped), on the ports it had, so the addresses
        the workers and the monitor were given stay true. A port still held a moment by the dead
        server's sockets is tried again for up to `port_wait_s`."""
        self.stop()
        ports = [int(address.rsplit(":", 1)[1].split("/")[0])
                 for address in (self.endpoints.http, self.endpoints.grpc, self.endpoints.metrics)]
        self.options = dataclasses.replace(self.options, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2])
        deadline = time.monotonic() + port_wait_s
        while True:
            try:
                self._start_once()
                return self
            except _PortTaken:
                if time.monotonic() > deadline:
                    raise ServerSetupError(f"tritonserver could not bind its ports again ({self.endpoints}):\n"
                                           f"{_failure_summary(self.log_path)}") from None
                time.sleep(1.0)

    def _command(self, http: int, grpc: int, metrics: int) -> list[str]:
        opts = self.options
        args: list[str]
        if opts.binary is None:
            bundled = locate_bundled()
            backend_dir = make_backend_dir(bundled, opts.work_dir / "backends")
            args = [
                str(bundled.binary),
                f"--backend-directory={backend_dir}",
                f"--cache-directory={bundled.cache_dir}",
            ]
        else:
            if not opts.binary.exists():
                raise ServerSetupError(f"tritonserver binary {opts.binary} does not exist")
            args = [str(opts.binary)]
        return [
            *args,
            f"--model-repository={opts.repository}",
            *(f"--model-repository={r}" for r in opts.extra_repositories),
            # Generated configs are complete; auto-complete would start an extra stub per model.
            "--disable-auto-complete-config",
            f"--backend-config=python,shm-region-prefix-name={opts.shm_prefix}",
            f"--http-address={opts.host}",
            f"--http-port={http}",
            f"--grpc-address={opts.host}",
            f"--grpc-port={grpc}",
            f"--metrics-address={opts.host}",
            f"--metrics-port={metrics}",
            *opts.extra_args,
        ]

    def _start_once(self) -> None:
        opts = self.options
        picked = iter(free_ports(3, opts.host))
        http, grpc, metrics = (port or next(picked) for port in (opts.http_port, opts.grpc_port, opts.metrics_port))
        self.endpoints = ServerEndpoints(
            http=f"{opts.host}:{http}", grpc=f"{opts.host}:{grpc}", metrics=f"http://{opts.host}:{metrics}/metrics"
        )
        command = self._command(http, grpc, metrics)
        env = stub_environment()
        env.update(dict(opts.env))
        self._env_before = _python_env_dirs()
        self._env_known = False
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                preexec_fn=_die_with_parent,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.options.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._reap_group()
                if any(marker in _log_tail(self.log_path, 40) for marker in _ADDRESS_IN_USE):
                    raise _PortTaken()
                raise ServerSetupError(f"tritonserver exited with status {self._process.returncode} while starting "
                                       f"(log {self.log_path}):\n{_failure_summary(self.log_path)}")
            if is_ready(self.endpoints.http, timeout=1.0):
                self.started_at = time.monotonic()
                self._known_stubs = {s.pid: s for s in find_stub_processes(self._process.pid)}
                self._env_dirs, self._env_known = self._own_python_env_dir(), True
                return
            time.sleep(0.1)
        # A model whose stub cannot start hangs the load forever and ignores SIGINT (TRITON_ON_CPU.md).
        self.stop()
        raise ServerSetupError(f"tritonserver was not ready within {self.options.startup_timeout:g} s "
                               f"(log {self.log_path}):\n{_failure_summary(self.log_path)}")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after `stop_timeout`; then make sure no stub outlives the server."""
        process = self._process
        if process is None:
            return None
        self._known_stubs.update({s.pid: s for s in find_stub_processes(process.pid)})
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.options.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._reap_group()
        self._remove_backend_regions()
        if not self._env_known:  # stopped while starting (a load that hangs past the deadline):
            self._env_dirs, self._env_known = self._own_python_env_dir(), True  # gone, it makes no more
        self._remove_python_env_dir()
        return process.returncode

    def _reap_group(self) -> None:
        """Stubs exit by themselves within seconds of their server; wait briefly, then kill."""
        assert self._process is not None
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(_alive(pid) for pid in self._known_stubs):
            time.sleep(0.05)
        for pid in self._known_stubs:
            if _alive(pid):
                _kill(pid)
        # The server leads its own process group; anything still in it is ours.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signal.SIGKILL)

    def _remove_backend_regions(self) -> None:
        """A stub killed hard leaves its python-backend region in /dev/shm; it is ours to unlink."""
        shm = Path("/dev/shm")
        for entry in shm.glob(f"{self.options.shm_prefix}*"):
            with contextlib.suppress(OSError):
                entry.unlink()

    def _own_python_env_dir(self) -> set[Path]:
        """The python backend directory our server made: ours only when it is the one that appeared
        since our server started (another server starting on this host meanwhile makes the owner
        unknowable: then none)."""
        made = _python_env_dirs() - self._env_before
        return made if len(made) == 1 else set()

    def _remove_python_env_dir(self) -> None:
        """The python backend's directory of a server that did not exit cleanly (a clean exit has
        removed it): only while empty, so an execution environment extracted there is never touched."""
        for path in self._env_dirs:
            with contextlib.suppress(OSError):  # gone already, or not empty
                path.rmdir()
        self._env_dirs = set()

    # -- what the monitor needs --------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def stub_processes(self) -> list[StubProcess]:
        """The python backend stubs running now (one per model instance; they come and go)."""
        if not self.is_running():
            return []
        stubs = find_stub_processes(self._process.pid)  # type: ignore[union-attr]
        self._known_stubs.update({s.pid: s for s in stubs})
        return stubs

    def log_tail(self, lines: int = 25) -> str:
        return _log_tail(self.log_path, lines)

    def __enter__(self) -> LaunchedServer:
        return self.start() if self._process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _PortTaken(Exception):
    pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def launch_server(options: LaunchOptions) -> LaunchedServer:
    """Start a server and return it once ready (raises ServerSetupError with the log tail if not)."""
    return LaunchedServer(options).start()
