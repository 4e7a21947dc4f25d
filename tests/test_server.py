"""The server launcher against the real bundled tritonserver: start, serve, stop, leave nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.server import (
    LaunchedServer,
    LaunchOptions,
    ServerSetupError,
    attach_server,
    endpoints_from_urls,
)
from engine.server._health import http_status
from engine.server._process import _python_env_dirs
from model_repo_gen import RepoOptions, generate_repository

pytestmark = pytest.mark.timeout(180)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_gone(pids: list[int], seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("repo")
    generate_repository(path, RepoOptions(models=("identity_fp32",), instance_count=2))
    return path


def _options(repo: Path, work: Path, **kw) -> LaunchOptions:
    return LaunchOptions(repository=repo, work_dir=work, stop_timeout=15.0, shm_prefix=f"tee_srv_{work.name}_", **kw)


def test_launch_serves_and_stop_leaves_nothing(repo: Path, tmp_path: Path) -> None:
    with LaunchedServer(_options(repo, tmp_path)) as server:
        assert http_status(f"http://{server.endpoints.http}/v2/models/identity_fp32/ready") == 200
        assert http_status(server.endpoints.metrics) == 200
        stubs = server.stub_processes()
        # one stub per model instance, each named after its instance
        assert sorted(s.instance for s in stubs) == ["identity_fp32_0_0", "identity_fp32_0_1"]
        pids = [server.pid, *(s.pid for s in stubs)]
        backend_regions = list(Path("/dev/shm").glob(f"tee_srv_{tmp_path.name}_*"))
        assert backend_regions, "the python backend's regions carry the configured prefix"
    assert _wait_gone(pids, 1.0) == []
    assert server.returncode is not None
    assert list(Path("/dev/shm").glob(f"tee_srv_{tmp_path.name}_*")) == []
    assert "Started GRPCInferenceService" in server.log_path.read_text()


def test_a_killed_server_leaves_no_python_backend_directory(repo: Path, tmp_path: Path) -> None:
    """The python backend makes /tmp/python_env_XXXXXX and removes it only on a clean exit: after a
    SIGKILL, stop() removes the one our server made, and nothing else."""
    before = _python_env_dirs()
    server = LaunchedServer(_options(repo, tmp_path)).start()
    try:
        made = _python_env_dirs() - before
        assert len(made) == 1 and server._env_dirs == made
        server._process.kill()
        server._process.wait()
        assert made <= _python_env_dirs()  # what a killed server leaves
    finally:
        server.stop()
    assert _python_env_dirs() - before == set()
    assert before <= _python_env_dirs()  # other servers' are not touched


def test_failure_inside_the_block_still_stops_the_server(repo: Path, tmp_path: Path) -> None:
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="test body failed"), LaunchedServer(_options(repo, tmp_path)) as server:
        pids = [server.pid, *(s.pid for s in server.stub_processes())]
        raise RuntimeError("test body failed")
    assert len(pids) == 3
    assert _wait_gone(pids, 1.0) == []


def test_killed_engine_takes_its_server_along(repo: Path, tmp_path: Path) -> None:
    """SIGKILL of the launching process: the parent-death signal stops the server and its stubs."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from engine.server import LaunchedServer, LaunchOptions
        s = LaunchedServer(LaunchOptions(repository=Path({str(repo)!r}), work_dir=Path({str(tmp_path)!r}),
                                         shm_prefix="tee_srv_{tmp_path.name}_"))
        s.start()
        print(s.pid, *(x.pid for x in s.stub_processes()), flush=True)
        time.sleep(120)
    """)
    env_dirs = _python_env_dirs()
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    try:
        pids = [int(x) for x in child.stdout.readline().split()]  # type: ignore[union-attr]
        assert len(pids) == 3 and all(_alive(p) for p in pids)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert _wait_gone(pids, 15.0) == []
    finally:
        child.kill()
        child.wait()
    for region in Path("/dev/shm").glob(f"tee_srv_{tmp_path.name}_*"):
        region.unlink()  # the hard-killed engine could not clean these; `cleanup` will (a later command)
    for directory in _python_env_dirs() - env_dirs:
        directory.rmdir()  # nor its server's python backend directory (empty: no environment is extracted)


def test_model_that_fails_to_load_gives_the_log_tail(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    generate_repository(repo, RepoOptions(models=("identity_fp32",), instance_count=1))
    (repo / "identity_fp32" / "1" / "model.py").write_text("this is not python\n")
    server = LaunchedServer(_options(repo, tmp_path / "work"))
    with pytest.raises(ServerSetupError) as err:
        server.start()
    text = str(err.value)
    assert "exited with status" in text
    assert "failed to load 'identity_fp32'" in text and "NameError" in text  # the server's own words
    assert "CudaDriverHelper" not in text  # harmless CPU-only noise is left out
    assert not server.is_running()
    assert list((tmp_path / "work").glob("*.log"))


def test_startup_deadline_kills_a_server_that_is_not_ready(repo: Path, tmp_path: Path) -> None:
    env_dirs = _python_env_dirs()
    server = LaunchedServer(_options(repo, tmp_path, startup_timeout=0.05))
    with pytest.raises(ServerSetupError, match="not ready within"):
        server.start()
    assert server.pid is not None and _wait_gone([server.pid], 1.0) == []
    assert _python_env_dirs() == env_dirs  # nor its python backend's directory


def test_missing_binary_is_a_clear_error(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ServerSetupError, match="does not exist"):
        LaunchedServer(_options(repo, tmp_path, binary=tmp_path / "nope" / "tritonserver")).start()


def test_attach_checks_live_ready_and_models(repo: Path, tmp_path: Path) -> None:
    with LaunchedServer(_options(repo, tmp_path)) as server:
        endpoints = server.endpoints
        attached = attach_server(endpoints, ["identity_fp32"], timeout=5)
        assert attached.pid is None and attached.is_running()
        attached.stop()  # never stops a server it did not start
        assert server.is_running()
        with pytest.raises(ServerSetupError, match="'identity_fp33' is not in the server's repository.*identity_fp32"):
            attach_server(endpoints, ["identity_fp33"], timeout=0.5)
        wrong_grpc = endpoints_from_urls(endpoints.http)  # Triton's default layout does not hold here
        if wrong_grpc.grpc != endpoints.grpc:
            with pytest.raises(ServerSetupError, match="gRPC endpoint"):
                attach_server(wrong_grpc, ["identity_fp32"], timeout=1)
    with pytest.raises(ServerSetupError, match="no Triton server answers"):
        attach_server(endpoints, [], timeout=0.3)


def test_endpoints_follow_tritons_default_layout() -> None:
    e = endpoints_from_urls("http://10.0.0.5:8000")
    assert (e.http, e.grpc, e.metrics) == ("10.0.0.5:8000", "10.0.0.5:8001", "http://10.0.0.5:8002/metrics")
    e = endpoints_from_urls("h:9000", grpc_url="h:9100", metrics_url="h:9200")
    assert (e.grpc, e.metrics) == ("h:9100", "http://h:9200/metrics")
    with pytest.raises(ServerSetupError, match="host:port"):
        endpoints_from_urls("justahost")
