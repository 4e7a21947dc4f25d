"""`python -m engine perf` against the real bundled tritonserver, through the CLI as users run it.

Most runs attach (--url) to one server this module starts, so the test can read the server's own
statistics around a run; the execute-delay test launches its own servers (the launch path)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model_repo_gen import RepoOptions, generate_repository
from shm import gpu_count, gpu_unavailable_reason
from tests.server_helpers import RunningServer, serve_repository

ROOT = Path(__file__).resolve().parents[1]
# The attached server's models sleep this long per request: the time is then mostly the model's
# own, so two runs agree within the tolerances below even while other jobs share the 2 cores.
DELAY_MS = 10.0


def _perf(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", "perf", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _config(path: Path, results: Path, *, delay_ms: float = DELAY_MS, server: RunningServer | None = None) -> Path:
    """A short sweep; with `server`, attached to it (its gRPC port is not HTTP + 1, so it is named)."""
    attach = f'[server]\nurl = "{server.http_url}"\ngrpc_url = "{server.grpc_url}"\n' if server else ""
    path.write_text(f"""{attach}
[run]
duration = "5m"
results_dir = "{results}"
[models]
instance_count = 1
execute_delay_ms = {delay_ms}
[perf]
models = ["identity_fp32"]
protocols = ["grpc", "grpc_stream", "http"]
concurrency = [1, 2]
request_rates = [100]
window = "1s"
warmup = "0.3s"
stability_windows = 2
stability_tolerance = 0.5
max_windows = 3
max_outstanding = 8
baseline_throughput_tolerance = 0.3
baseline_p99_tolerance = 1.0
""")
    return path


def _successes(server: RunningServer, model: str) -> int:
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{model}/stats", timeout=5) as answer:
        stats = json.loads(answer.read())["model_stats"]
    return sum(int(entry["inference_stats"]["success"]["count"]) for entry in stats)


def _run_dir(results: Path) -> Path:
    (run_dir,) = [p for p in results.iterdir() if p.is_dir()]
    return run_dir


@pytest.fixture(scope="module")
def attached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    work = tmp_path_factory.mktemp("perf_server")
    generate_repository(work / "repo", RepoOptions(models=("identity_fp32", "identity_int32"), instance_count=1,
                                                   execute_delay_ms=DELAY_MS))
    with serve_repository(work / "repo", work / "server") as server:
        yield server


@pytest.fixture(scope="module")
def first_sweep(attached: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """3 protocols x (2 concurrencies + 1 rate), attached, with the server's success count read
    before and after, and the run saved as a baseline."""
    work = tmp_path_factory.mktemp("perf_first")
    config = _config(work / "perf.toml", work / "results", server=attached)
    before = _successes(attached, "identity_fp32")
    done = _perf("--config", str(config), "--save-baseline", str(work / "base.json"))
    after = _successes(attached, "identity_fp32")
    return {"done": done, "work": work, "config": config, "server_delta": after - before}


@pytest.mark.timeout(240)
def test_sweep_writes_csv_and_json_that_agree_with_each_other_and_the_server(first_sweep: dict[str, Any]) -> None:
    done = first_sweep["done"]
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = _run_dir(first_sweep["work"] / "results")
    doc = json.loads((run_dir / "perf.json").read_text())
    assert doc["schema"] == "triton-endurance-perf" and doc["version"] == 1 and doc["complete"]
    points = doc["points"]
    assert len(points) == 9 and all(p["status"] in ("stable", "unstable") for p in points), points
    # The server's success count grew by exactly what the client says it had answered: per point
    # (the engine's own reads of /v2/models/<m>/stats) and over the run (read here, independently).
    for p in points:
        assert p["requests"]["answered"] == p["requests"]["server_success"], p["key"]
        assert p["requests"]["errors_total"] == 0, p["error_samples"]
    assert sum(p["requests"]["answered"] for p in points) == first_sweep["server_delta"]

    by_level = {(p["protocol"], p["load"], float(p["level"])): p for p in points}
    tables = {"perf.csv": ("Concurrency", "concurrency"), "perf_request_rate.csv": ("Request Rate", "request_rate")}
    for name, (first_column, load) in tables.items():
        rows = list(csv.DictReader((run_dir / name).open()))
        assert len(rows) == (6 if load == "concurrency" else 3)
        for row in rows:
            p = by_level[(row["Protocol"], load, float(row[first_column]))]
            assert float(row["Inferences/Second"]) == pytest.approx(p["throughput_infer_per_s"], abs=0.006)
            for column, figure in (("p50 latency", "p50"), ("p90 latency", "p90"), ("p95 latency", "p95"),
                                   ("p99 latency", "p99"), ("Avg latency", "avg")):
                assert int(row[column]) == round(p["latency_us"][figure])
            assert int(row["Server Queue"]) == round(p["server_us"]["queue"])
            assert int(row["Server Compute Infer"]) == round(p["server_us"]["compute_infer"])
            assert int(row["Client Send"]) == round(p["client_us"]["send"])
            assert int(row["Request Count"]) == p["requests"]["counted"]
            assert int(row["Error Count"]) == 0 and row["Model"] == "identity_fp32"
            # Over the reported windows the server's count and the client's differ only by requests
            # in flight at the two window edges (at most one per lane on each side, plus the ones
            # answered during the ~1 ms statistics read).
            lanes = int(p["level"]) if load == "concurrency" else 8
            assert abs(p["server_requests"]["success"] - p["requests"]["counted"]) <= 3 * lanes + 2
            assert p["server_us"]["compute_infer"] >= DELAY_MS * 1000 * 0.9  # the model's sleep is in there
    assert "infer/s" in done.stdout and "p99" in done.stdout  # the terminal table
    assert (first_sweep["work"] / "base.json").is_file()


@pytest.mark.timeout(240)
def test_gate_passes_against_the_baseline_it_wrote(attached: RunningServer, first_sweep: dict[str, Any],
                                                   tmp_path: Path) -> None:
    base = first_sweep["work"] / "base.json"
    done = _perf("--config", str(first_sweep["config"]), "--baseline", str(base),
                 "--protocols", "grpc,http", "--concurrency", "1", "--request-rates", "",
                 "--results-dir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gate: PASS" in done.stdout
    assert "missing from this run (in the baseline): identity_fp32 grpc_stream" in done.stdout


@pytest.mark.timeout(240)
def test_gate_fails_against_a_baseline_edited_to_be_faster(attached: RunningServer, first_sweep: dict[str, Any],
                                                           tmp_path: Path) -> None:
    doc = json.loads((first_sweep["work"] / "base.json").read_text())
    for point in doc["points"]:  # 50 % faster: half the time per request, so twice the requests per second
        point["throughput_infer_per_s"] *= 2
        point["latency_us"] = {k: v * 0.5 for k, v in point["latency_us"].items()}
    faster = tmp_path / "faster.json"
    faster.write_text(json.dumps(doc))
    done = _perf("--config", str(first_sweep["config"]), "--baseline", str(faster),
                 "--protocols", "grpc", "--shm", "none,system,cuda", "--concurrency", "1", "--request-rates", "",
                 "--results-dir", str(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr
    gate = done.stdout[done.stdout.index("baseline gate"):]
    key = "identity_fp32 grpc shm=none batch=1 elements=16 concurrency=1"
    assert "gate: FAIL" in gate
    assert f"{key}: throughput -" in gate  # about -50 % (noise aside), named with its metric
    assert "new in this run (not in the baseline): identity_fp32 grpc shm=system" in gate
    if gpu_count() == 0:  # the CUDA point is skipped with its reason, not an error
        assert "skipped: no GPU for CUDA shared memory" in done.stdout


@pytest.mark.timeout(240)
def test_an_added_execute_delay_is_caught_by_the_gate(tmp_path: Path) -> None:
    """Two launched servers: the model's execute_delay_ms goes from 0 to 20 ms between the runs."""
    point = ["--protocols", "grpc", "--concurrency", "1", "--request-rates", ""]
    before = _config(tmp_path / "before.toml", tmp_path / "results", delay_ms=0)
    after = _config(tmp_path / "after.toml", tmp_path / "results", delay_ms=20)
    base = tmp_path / "base.json"
    done = _perf("--config", str(before), *point, "--save-baseline", str(base))
    assert done.returncode == 0, done.stdout + done.stderr
    done = _perf("--config", str(after), *point, "--baseline", str(base))
    assert done.returncode == 1, done.stdout + done.stderr
    gate = done.stdout[done.stdout.index("baseline gate"):]
    assert "gate: FAIL: 2 regression(s):" in gate and ": throughput -" in gate and ": p99 +" in gate
    assert "note: identity_fp32: execute_delay_ms is 20.0 in this run, 0.0 in the baseline" in gate


@pytest.mark.timeout(120)
def test_the_l0_perf_pyclients_point(attached: RunningServer, tmp_path: Path) -> None:
    """The reference suite's Python perf client test: identity, a 100,000-element INT32 input,
    concurrency 1, over gRPC and HTTP; throughput and p50/p90/p95/p99 reported."""
    config = _config(tmp_path / "l0.toml", tmp_path / "results", server=attached)
    done = _perf("--config", str(config), "--models", "identity_int32", "--input-elements", "100000",
                 "--protocols", "grpc,http", "--concurrency", "1", "--request-rates", "")
    assert done.returncode == 0, done.stdout + done.stderr
    points = json.loads((_run_dir(tmp_path / "results") / "perf.json").read_text())["points"]
    assert [(p["protocol"], p["input_elements"]) for p in points] == [("grpc", 100000), ("http", 100000)]
    for p in points:
        lat = p["latency_us"]
        assert p["throughput_infer_per_s"] > 0 and lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"]


@pytest.mark.timeout(120)
def test_cuda_shared_memory_point(attached: RunningServer, tmp_path: Path) -> None:
    if gpu_count() == 0:
        pytest.skip(f"no GPU: {gpu_unavailable_reason()}")
    config = _config(tmp_path / "cuda.toml", tmp_path / "results", server=attached)
    done = _perf("--config", str(config), "--shm", "cuda", "--protocols", "grpc", "--concurrency", "1",
                 "--request-rates", "")
    assert done.returncode == 0, done.stdout + done.stderr
    (point,) = json.loads((_run_dir(tmp_path / "results") / "perf.json").read_text())["points"]
    assert point["status"] in ("stable", "unstable")


def _bad_baseline(tmp_path: Path) -> list[str]:
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"schema": "triton-endurance-perf", "version": 1, "points": [')
    return ["--baseline", str(corrupt)]


@pytest.mark.parametrize(("args", "message"), [
    (lambda tmp: ["--models", "nosuch"], "perf.models[0] = \"nosuch\""),
    (lambda tmp: ["--models", "sequence_int32"], "'sequence_int32' is a sequence model"),
    (lambda tmp: ["--baseline", str(tmp / "missing.json")], "no such baseline file"),
    (_bad_baseline, "not valid JSON"),
    (lambda tmp: ["--concurrency", "", "--request-rates", ""], "both empty"),
])
def test_bad_input_exits_2_with_one_clear_line(tmp_path: Path, args: Any, message: str) -> None:
    done = _perf("--config", "perf.toml", "--results-dir", str(tmp_path), *args(tmp_path), timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert message in done.stderr
    assert not list(tmp_path.glob("*/perf.json"))  # refused before any server started


def test_unknown_model_in_the_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[perf]\nmodels = ["identity_fp3"]\n')
    done = _perf("--config", str(bad), timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "perf.models[0]" in done.stderr and "identity_fp32" in done.stderr


def test_help_is_complete() -> None:
    done = _perf("--help", timeout=60)
    assert done.returncode == 0
    for option in ("--baseline", "--save-baseline", "--ignore-unstable", "--models", "--protocols", "--shm",
                   "--batch-sizes", "--concurrency", "--request-rates", "--input-elements", "--window", "--warmup",
                   "--max-windows", "--duration", "--url", "--results-dir", "Exit status"):
        assert option in done.stdout
