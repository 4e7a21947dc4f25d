"""The watch side end to end, as a user runs it: `python -m engine` against the real server, with
the deliberately faulty models beside healthy ones in the same run (positive and negative
controls), then the verdicts read back from the run's store.

Every fault must be found, from the data alone, naming the right model, process or instance; no
healthy model, and not the server, may get a verdict; a run of healthy models under the same
detectors gets none at all. Time to detection is printed (pytest -s shows it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
HEALTHY = ("identity_fp32", "identity_bytes", "sequence_int32")
DRIFT_ONSET_S = 65.0  # after the model loads: the drift baseline windows (30-60 s of the run) come before it

# Shorter windows and warm-up, so strong faults show within a couple of minutes. Only the window,
# warm-up and data lengths change from the smoke profile; the gates are the profile's. (With 2 s
# windows the drift baseline spans 12 s, shorter than the slow swings of a loaded 2-core machine's
# latency: every model then "drifts" by 20 %.)
DETECTORS = """
[detectors]
profile = "smoke"
window = "5s"
warmup = "30s"
leak_min_data = "20s"
drift_min_requests = 10
"""

WEIGHTS = """
[scenarios.weights]
identity = 300
sequence_valid = 10
timeout = 0
crashing_client = 0
sequence_no_end = 0
sequence_valid_no_end = 0
sequence_valid_valid = 0
sequence_no_start = 0
steady_load = 0
large_tensor = 0
streaming = 0
"""


# Open loop: the offered load does not change when one model slows down, so one fault does not
# change what the others see (and a leak per request is a leak at a steady pace).
OPEN_LOOP = """
[workers]
count = 2
shm = "system"
load = "constant"
rate = 50.0
"""
# The smoke config's closed loop, for the full scenario mix.
CLOSED_LOOP = """
[workers]
count = 2
shm = "system"
concurrency = 1
"""


def _config(tmp_path: Path, models: tuple[str, ...], duration: str, workers: str = OPEN_LOOP,
            weights: str = WEIGHTS) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(f"""
[run]
duration = "{duration}"
seed = 11
results_dir = "{tmp_path / 'results'}"

[server]
extra_args = ["--exit-timeout-secs=2"]   # a hung instance must not hold the server's exit

[models]
models = {list(models)!r}
instance_count = 2
sequence_idle_timeout = "2s"

[models.faults]
leak_bytes_per_request = 16384
hang_after_requests = 300
drift_ms_per_minute = 30.0
drift_onset = "{DRIFT_ONSET_S:g}s"
wrong_every = 50
plateau_bytes = 33554432
plateau_time_constant = "5s"

{workers}
{weights}
{DETECTORS}
[report]
live = "plain"
""")
    return path


def _run(config: Path, timeout: float) -> tuple[subprocess.CompletedProcess[str], Path]:
    done = subprocess.run([sys.executable, "-m", "engine", "--config", str(config)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    [run_dir] = list((config.parent / "results").iterdir())
    return done, run_dir


def _slope_per_hour(t: np.ndarray, v: np.ndarray) -> float:
    return float(np.polyfit(t / 3600.0, v, 1)[0])


@pytest.mark.timeout(330)
def test_faults_are_found_and_healthy_models_are_left_alone(tmp_path: Path) -> None:
    models = (*HEALTHY, "leak_fp32", "hang_fp32", "drift_fp32", "wrong_fp32", "plateau_fp32")
    done, run_dir = _run(_config(tmp_path, models, "150s"), timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out  # failing verdicts
    store = RunStore.open(run_dir / "run.sqlite")
    try:
        verdicts = [r.verdict for r in store.verdicts() if r.state != "info"]
        failing = [r.verdict for r in store.verdicts() if r.state in ("open", "cleared")]
        series = {name: store.series(name) for name in store.series_names()}
    finally:
        store.close()
    described = "\n".join(v.describe() for v in verdicts)

    # Negative controls: no verdict about a healthy model, the plateau model or the server.
    for v in failing:
        assert not any(v.subject.startswith(m) or f"stub/{m}_" in v.subject for m in (*HEALTHY, "plateau_fp32")), \
            described
        assert "server" not in v.subject, described

    # The leak: a growth of the leaking model's own stub processes, within a factor of 2 of the
    # bytes the model says it retained (its ground-truth metric, which no detector reads).
    growth = [v for v in failing if v.detector == "leak"]
    assert growth and all("stub/leak_fp32_" in v.subject for v in growth), described
    for v in growth:
        instance = v.subject.split("stub/", 1)[1].split(" ", 1)[0]
        t, retained = series[f"truth/{instance}/engine_model_retained_bytes"]
        keep = t >= v.since_s
        truth = _slope_per_hour(t[keep], retained[keep]) / 2**20
        print(f"leak {instance}: {v.size:.0f} MiB/h (truth {truth:.0f}), detected {v.at_s - 30:.0f} s after warm-up")
        assert truth / 2 <= v.size <= truth * 2, (v, truth)

    # The hang: a stall naming the model and the instance that holds the request.
    [stall] = [v for v in failing if v.detector == "stall"]
    assert stall.subject == "hang_fp32 instance hang_fp32_0_0", described
    print(f"stall: {stall.describe()}; detected {stall.at_s - stall.since_s:.1f} s after the request hung")

    # The drift: latency of the drifting model against its own baseline.
    drift = [v for v in failing if v.detector == "drift"]
    assert drift and all(v.subject.startswith("drift_fp32 ") for v in drift), described
    print(f"drift: {drift[0].describe()}; detected at {drift[0].at_s:.0f} s of the run")

    # Wrong answers: validation failures of the model that gives them, and only of it.
    wrong = [v for v in failing if v.detector == "wrong_answers"]
    assert wrong and all(v.subject.startswith("wrong_fp32 ") for v in wrong), described
    print(f"wrong: {wrong[0].describe()}; detected at {wrong[0].at_s:.0f} s")


@pytest.mark.timeout(330)
def test_healthy_models_get_no_verdict_under_the_same_detectors(tmp_path: Path) -> None:
    models = ("identity_fp32", "identity_bytes", "zero_fp32", "sequence_int32", "sequence_nobatch_int32",
              "decoupled_int32")
    # The full scenario mix of the smoke config this time, so every scenario's traffic is judged.
    config = _config(tmp_path, models, "150s", workers=CLOSED_LOOP, weights="")
    done, run_dir = _run(config, timeout=300)
    out = done.stdout + done.stderr
    store = RunStore.open(run_dir / "run.sqlite")
    try:
        verdicts = store.verdicts()
        windows = store.windows()
        incidents = store.incidents()
    finally:
        store.close()
    assert windows, out
    crashed = [what for _, what in incidents if what.startswith("the server exited (status -")]
    if crashed:
        # The bundled tritonserver (2.51) once died of SIGSEGV mid-run in CI. Not confirmed, but
        # likely: the gRPC request-cancellation segfaults fixed after 2.51 (triton-inference-server/
        # server#7368, #8034), which the timeout scenario's cancellations can hit. Every model then
        # fails with the server, rightly, and the run says nothing about false alarms on healthy ones.
        pytest.skip(f"the server itself crashed during the run ({crashed[0]}): no negative control")
    assert [r.verdict.describe() for r in verdicts if r.state != "info"] == [], out
    assert done.returncode == 0, out
