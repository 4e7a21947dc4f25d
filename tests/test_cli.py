"""The command line as a user meets it: help, bad input, and the smoke run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args", [
    ("-m", "engine", "--help"),
    ("-m", "engine", "run", "--help"),
    ("-m", "engine", "gen-repo", "--help"),
    ("-m", "engine", "show-config", "--help"),
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
def test_smoke_run_brings_every_model_up_and_stops_everything(tmp_path: Path) -> None:
    """The README's main command, minus the install: every model answers, nothing is left running."""
    done = _run("-m", "engine", "--config", "configs/smoke.toml", "--results-dir", str(tmp_path), timeout=200)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verdict: PASS" in done.stdout
    run_dirs = list(tmp_path.iterdir())
    assert len(run_dirs) == 1
    resolved = json.loads((run_dirs[0] / "config.json").read_text())
    models = resolved["config"]["models"]["models"]
    for model in models:  # each configured model shows up as answered in the table
        assert any(line.split()[:2] == [model, "ok"] for line in done.stdout.splitlines()), model
    assert (run_dirs[0] / "server" / "tritonserver.log").exists()
    leftover = subprocess.run(["pgrep", "-f", str(run_dirs[0])], capture_output=True, text=True)
    assert leftover.stdout == ""
