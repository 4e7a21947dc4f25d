"""The command line as a user meets it: help, bad input, and the smoke run end to end."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args", [
    ("-m", "engine", "--help"),
    ("-m", "engine", "run", "--help"),
    ("-m", "engine", "gen-repo", "--help"),
    ("-m", "engine", "show-config", "--help"),
    ("-m", "engine", "report", "--help"),
    ("-m", "model_repo_gen", "--help"),
])
def test_help_works(args: tuple[str, ...]) -> None:
    done = _run(*args)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[workers]\nprotocl = "grpc"\n')
    done = _run("-m", "engine", "--config", str(bad))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "bad.toml" in lines[0] and "protocl" in lines[0] and "protocol" in lines[0]


def test_bad_override_is_exit_2(tmp_path: Path) -> None:
    done = _run("-m", "engine", "show-config", "--config", "smoke", "--duration", "soon")
    assert done.returncode == 2 and "soon" in done.stderr and "Traceback" not in done.stderr


def test_show_config_resolves_shipped_names_and_applies_overrides(tmp_path: Path) -> None:
    done = _run("-m", "engine", "show-config", "--config", "long.toml", "--workers", "3", "--duration", "1h30m",
                "--seed", "7", cwd=tmp_path)  # no long.toml here: the shipped one is used
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert config["workers"]["count"] == 3
    assert config["run"]["duration"] == 5400
    assert config["run"]["seed"] == 7


def test_gen_repo_writes_the_configs_models(tmp_path: Path) -> None:
    done = _run("-m", "engine", "gen-repo", "--config", "smoke", "--out", str(tmp_path / "repo"))
    assert done.returncode == 0, done.stderr
    written = sorted(p.parent.name for p in (tmp_path / "repo").glob("*/config.pbtxt"))
    assert written and "sequence_int32" in written


@pytest.mark.timeout(240)
def test_smoke_run_passes_reports_and_stops_everything(tmp_path: Path) -> None:
    """The README's main command, shortened: probes, load, the per-scenario table, nothing left running."""
    done = _run("-m", "engine", "--config", "configs/smoke.toml", "--results-dir", str(tmp_path),
                "--duration", "20s", timeout=200)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verdict: PASS" in done.stdout
    run_dirs = list(tmp_path.iterdir())
    assert len(run_dirs) == 1
    resolved = json.loads((run_dirs[0] / "config.json").read_text())
    for model in resolved["config"]["models"]["models"]:  # each configured model answered its probe
        assert any(line.split()[:2] == [model, "ok"] for line in done.stdout.splitlines()), model
    report = (run_dirs[0] / "stress_report.txt").read_text()
    total = next(line for line in report.splitlines() if line.startswith("TOTAL")).split("|")
    assert int(total[1]) == 0 and int(total[2]) > 10 and int(total[3]) > int(total[2])
    assert "sequence_valid" in report
    assert (run_dirs[0] / "server" / "tritonserver.log").exists()
    report_json = json.loads((run_dirs[0] / "report.json").read_text())
    assert report_json["verdict"] == "PASS" and report_json["ended_normally"] and report_json["verdicts"] == []
    assert sum(row["requests"] for row in report_json["scenarios"]) == int(total[3])
    page = (run_dirs[0] / "report.html").read_text()
    assert page.count("<svg") >= 3 and "PASS" in page  # throughput, latency and memory plots
    assert not re.search(r'(src|href)=["\']?(https?:|//)', page)  # self-contained: nothing fetched

    leftover = subprocess.run(["pgrep", "-f", str(run_dirs[0])], capture_output=True, text=True)
    assert leftover.stdout == ""


@pytest.mark.timeout(240)
def test_sigint_stops_gracefully_with_a_full_report(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "engine", "--config", "configs/smoke.toml", "--results-dir",
                                str(tmp_path), "--duration", "10m"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:  # type: ignore[union-attr]
            if " requests, " in line:  # the first progress line: load is flowing
                break
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, out
    assert "stop requested by signal" in out and "TOTAL" in out and "verdict: PASS" in out
    run_dir = next(tmp_path.iterdir())
    assert (run_dir / "stress_report.txt").exists()
    store = RunStore.open(run_dir / "run.sqlite")  # the incident and the last windows are in the store
    try:
        assert any("stop requested by signal" in what for _, what in store.incidents())
        assert store.windows() and store.totals()
    finally:
        store.close()
    assert subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True).stdout == ""


@pytest.mark.timeout(240)
def test_a_second_sigint_stops_at_once_and_leaves_a_readable_store(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "engine", "--config", "configs/smoke.toml", "--results-dir",
                                str(tmp_path), "--duration", "10m"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:  # type: ignore[union-attr]
            if " requests, " in line:
                break
        process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        out, err = process.communicate(timeout=120)
        took = time.monotonic() - started
    finally:
        process.kill()
    assert process.returncode == 1 and "stopped at once by a second interrupt" in err, out + err
    assert took < 60, took  # no waiting for plans to finish
    run_dir = next(tmp_path.iterdir())
    done = _run("-m", "engine", "report", str(run_dir))
    assert done.returncode == 1 and "TOTAL" in done.stdout, done.stdout + done.stderr
    assert subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True).stdout == ""


def test_cleanup_removes_a_crashed_runs_leftovers(tmp_path: Path) -> None:
    """A killed run leaves POSIX shm objects behind: its workers' and its server's python backend's."""
    run_id = "20990101-000000-dead"
    ours = [Path(f"/dev/shm/tee_{run_id}_w0_0"), Path(f"/dev/shm/tee_{run_id}_w1_0"),
            Path(f"/dev/shm/tee{run_id.replace('-', '')}_backendregion")]
    other = Path("/dev/shm/tee_20990101-000000-live_w0_0")
    try:
        for path in (*ours, other):
            path.write_bytes(b"\0" * 4096)
        done = _run("-m", "engine", "cleanup", run_id)
        assert done.returncode == 0, done.stderr
        assert "unlinked 2 worker regions and 1 server regions" in done.stdout
        assert not any(p.exists() for p in ours)
        assert other.exists()  # another run's region is not touched
    finally:
        for path in (*ours, other):
            path.unlink(missing_ok=True)


@pytest.mark.timeout(420)
def test_a_killed_coordinator_leaves_nothing_running_and_report_rebuilds_from_its_store(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "engine", "--config", "configs/smoke.toml", "--results-dir",
                                str(tmp_path), "--duration", "10m"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:  # type: ignore[union-attr]
            if " requests, " in line:  # load is flowing, windows are being written
                break
        process.kill()  # SIGKILL: no handler, no finally
        process.wait(10)
    finally:
        process.kill()
    run_dir = next(tmp_path.iterdir())
    # Its children stop with it: the server (PDEATHSIG), the workers after their plans, the
    # aggregator after draining; nothing of the run keeps running.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True,
                                                         text=True).stdout:
        time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True).stdout == ""
    done = _run("-m", "engine", "report", str(run_dir))
    assert done.returncode in (0, 1), done.stderr
    assert "TOTAL" in done.stdout and "identity_fp32" in done.stdout
    report = json.loads((run_dir / "report.json").read_text())
    assert report["schema_version"] == 1 and report["run_id"] == run_dir.name
    assert sum(row["requests"] for row in report["latency"]) > 100
    assert sum(row["requests"] for row in report["scenarios"]) > 0
    # Leftovers of the crashed run (as a killed worker would leave them) do not disturb the next run...
    leftover = Path(f"/dev/shm/tee_{run_dir.name}_w9_0")
    leftover.write_bytes(b"\0" * 4096)
    try:
        second = _run("-m", "engine", "--config", "configs/smoke.toml", "--results-dir", str(tmp_path / "next"),
                      "--duration", "10s", timeout=200)
        assert second.returncode == 0 and "verdict: PASS" in second.stdout, second.stdout + second.stderr
        assert leftover.exists()  # ...which leaves what is not its own alone
        cleanup = _run("-m", "engine", "cleanup", run_dir.name)  # whatever the workers could not unlink
        assert cleanup.returncode == 0, cleanup.stderr
        assert not leftover.exists()
    finally:
        leftover.unlink(missing_ok=True)


def test_report_of_a_directory_without_a_store_is_exit_2(tmp_path: Path) -> None:
    done = _run("-m", "engine", "report", str(tmp_path))
    assert done.returncode == 2 and "no run store" in done.stderr and "Traceback" not in done.stderr
