"""Every process of a run sets itself up the same way (workers.process_setup): the real aggregator,
monitor and worker processes carry `triton-endurance <run id>: <role>` where ps reads it
(/proc/<pid>/cmdline), their role as the task name, and each keeps its own signals: the aggregator
ignores SIGINT and stops on SIGTERM, the monitor and the worker stop on either, cleanly from the
moment they carry their title (the signal goes as soon as the title shows, while the process is
still setting up). No server runs: the monitor and the worker point at a port where nothing listens."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from engine.aggregator.service import AggregatorSpec, start_aggregator
from engine.config import DEFAULT_WEIGHTS, ScenariosSection
from engine.config._sections import DetectorsSection
from engine.detectors.settings import resolve_settings
from engine.monitor import MonitorSpec, start_monitor
from model_repo_gen.catalog import build_specs
from model_repo_gen.options import RepoOptions
from tests.server_helpers import telemetry_sink
from workers import process_setup
from workers.process_setup import enter_process, process_title, set_process_title
from workers.worker import WorkerSpec, start_worker

pytestmark = pytest.mark.timeout(120)

RUN_ID = "20260101-000000-t1t1"
START_S = 60.0  # a spawned process imports its modules first; the machine may be busy


def _argv(pid: int) -> list[str]:
    """The process's command line as ps shows it (setproctitle pads the old one with NULs)."""
    return [part for part in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if part]


def _title(process) -> list[str]:
    """The command line as soon as the process has titled itself (polled without a pause, so that a
    signal sent next reaches it while it is still setting up)."""
    deadline = time.monotonic() + START_S
    while process.is_alive() and time.monotonic() < deadline:
        argv = _argv(process.pid)
        if argv and argv[0].startswith("triton-endurance"):
            return argv
        time.sleep(0.001)
    raise AssertionError(f"no title came: exit status {process.exitcode}")


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().rstrip("\n")


def _titled_then_stopped(process, role: str, stop: int, ignored: int | None = None) -> int | None:
    """Assert the process's title and task name; send `ignored` (it must live on), then `stop`.
    Returns its exit status; kills it when it did not stop."""
    try:
        assert _title(process) == [f"triton-endurance {RUN_ID}: {role}"]
        assert _comm(process.pid) == role
        if ignored is not None:
            os.kill(process.pid, ignored)
            time.sleep(1.0)
            assert process.is_alive(), f"{role} stopped on signal {ignored}"
        os.kill(process.pid, stop)
        process.join(30)
        return process.exitcode
    finally:
        if process.is_alive():
            process.kill()
            process.join(10)


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_aggregator_is_titled_ignores_sigint_and_stops_on_sigterm(tmp_path: Path) -> None:
    settings = resolve_settings(DetectorsSection(profile="smoke", window=0.5))
    spec = AggregatorSpec(run_id=RUN_ID, endpoint=f"ipc://{tmp_path}/telemetry.sock",
                          store_path=str(tmp_path / "run.sqlite"), config_json="{}", started_wall="now",
                          origin_ns=time.monotonic_ns(), run_s=10.0, settings=settings)
    # SIGINT is the coordinator's to act on, not the aggregator's.
    assert _titled_then_stopped(start_aggregator(spec), "aggregator", signal.SIGTERM, ignored=signal.SIGINT) == 0


def test_a_fleets_monitor_is_titled_with_its_target_and_stops_on_sigint(tmp_path: Path) -> None:
    port = _unused_port()
    with telemetry_sink(tmp_path) as (endpoint, _):
        spec = MonitorSpec(server_pid=None, metrics_url=f"http://127.0.0.1:{port}/metrics",
                           http_url=f"http://127.0.0.1:{port}", run_id=RUN_ID, shm_prefixes=(f"tee_{RUN_ID}_",),
                           interval_s=0.2, telemetry_endpoint=endpoint, deadline_s=60.0, series_prefix="target/gpu-a/")
        assert _titled_then_stopped(start_monitor(spec), "monitor gpu-a", signal.SIGINT) == 0


def test_a_worker_is_titled_with_its_number_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _unused_port()
    identity_only = ScenariosSection(weights={**{k: 0 for k in DEFAULT_WEIGHTS}, "identity": 1})
    with telemetry_sink(tmp_path) as (endpoint, _):
        spec = WorkerSpec(worker_id=3, run_id=RUN_ID, seed=1, id_base=1, id_block=1 << 20,
                          grpc_url=f"127.0.0.1:{port}", http_url=f"127.0.0.1:{port}", protocol="grpc", concurrency=1,
                          models=build_specs(RepoOptions(models=("identity_fp32",))), scenarios=identity_only,
                          telemetry_endpoint=endpoint, deadline_s=60.0, event_loop="asyncio")
        assert _titled_then_stopped(start_worker(spec), "worker 3", signal.SIGTERM) == 0


def test_the_title_names_the_run_and_the_role() -> None:
    assert process_title("r1", "coordinator") == "triton-endurance r1: coordinator"
    assert process_title("r1", "worker 12") == "triton-endurance r1: worker 12"


def test_set_process_title_titles_this_process_and_cuts_the_task_name(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(process_setup.setproctitle, "setproctitle", lambda title: calls.append(("title", title)))
    monkeypatch.setattr(process_setup.setproctitle, "setthreadtitle", lambda name: calls.append(("comm", name)))
    set_process_title("r1", "monitor a-very-long-target-name")
    assert calls == [("title", "triton-endurance r1: monitor a-very-long-target-name"), ("comm", "monitor a-very-")]


def _record_setup(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """enter_process's steps, recorded instead of done (this is the test runner's own process)."""
    steps: list[object] = []
    monkeypatch.setattr(process_setup, "set_process_title", lambda run_id, role: steps.append(("title", role)))
    monkeypatch.setattr(process_setup.signal, "signal", lambda sig, handler: steps.append((sig, handler)))
    monkeypatch.setattr(process_setup, "stop_with_parent", lambda parent: steps.append("stop_with_parent"))
    monkeypatch.setattr(process_setup, "limit_arenas", lambda: steps.append("limit_arenas"))
    monkeypatch.setattr(process_setup, "fix_mmap_threshold", lambda: steps.append("fix_mmap_threshold"))
    return steps


def test_a_watch_process_gets_its_handlers_before_its_title_and_the_parent_death_signal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    steps = _record_setup(monkeypatch)
    stopped: list[int] = []
    timer = enter_process("r1", "aggregator", stop=lambda: stopped.append(1), stop_on=(signal.SIGTERM,),
                          ignore=(signal.SIGINT,), watch=True)
    assert steps[0][0] == signal.SIGTERM and steps[1] == (signal.SIGINT, signal.SIG_IGN)
    assert steps[2] == ("title", "aggregator")
    assert steps[3:] == ["stop_with_parent", "limit_arenas", "fix_mmap_threshold"]
    steps[0][1](signal.SIGTERM, None)  # the handler calls the process's stop
    assert stopped == [1]
    assert timer.interval_s > 0  # the heap timer its loop ticks


def test_a_process_given_no_signals_keeps_their_defaults_and_the_mmap_threshold(monkeypatch) -> None:
    steps = _record_setup(monkeypatch)
    enter_process("r1", "worker 0")
    assert steps == [("title", "worker 0"), "stop_with_parent", "limit_arenas"]


def test_stop_signals_without_a_stop_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = _record_setup(monkeypatch)
    with pytest.raises(ValueError, match="monitor"):
        enter_process("r1", "monitor", stop_on=(signal.SIGTERM,))
    assert steps == []
