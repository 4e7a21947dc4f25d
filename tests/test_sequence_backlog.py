"""Sequences waiting in the server's backlog for a slot are not a stall; a holder that hangs is.

Issue 16: eight workers on a nobatch sequence model with two slots, and sequences left without
END that hold a slot until the server's idle timeout: a new sequence's START waits in the
backlog for several idle timeouts, which the stall detector called a deadlock. These runs drive
the real engine against the real server: more sequences in flight than slots, most of them never
ended, must get no stall verdict; the same load on a model whose instance hangs mid-sequence
must get a STALL. The in-flight table's per-model figures are checked first, on their own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.detectors.stall import SMOKE, ModelTiming, start_bound_s
from engine.store import RunStore
from tests.server_helpers import only_weights
from workers.executor import InFlight

ROOT = Path(__file__).resolve().parents[1]
IDLE_S = 4.0  # the models' sequence idle timeout
PLANS = 8  # 2 workers x 4 plans in flight, on 2 slots


def test_in_flight_table_keeps_starts_apart_per_model() -> None:
    flight = InFlight()
    a = flight.begin(100, 0)  # a stateless request of model 0
    flight.begin(50, 1, True)  # two STARTs of model 1 waiting for a slot
    flight.begin(70, 1, True)
    flight.begin(90, 1)  # a step of a sequence of model 1 that holds a slot
    oldest, counts, starts = flight.by_model()
    assert oldest == {0: 100, 1: 90} and counts == {0: 1, 1: 3} and starts == {1: (2, 50)}
    assert flight.oldest_by_model() == oldest and flight.oldest_ns() == 50
    flight.end(a)
    assert flight.by_model() == ({1: 90}, {1: 3}, {1: (2, 50)})


def _config(tmp_path: Path, model: str, duration: str, extra: str = "") -> Path:
    path = tmp_path / "run.toml"
    path.write_text(f"""
[run]
duration = "{duration}"
seed = 5
results_dir = "{tmp_path / 'results'}"

[server]
extra_args = ["--exit-timeout-secs=2"]   # a hung instance must not hold the server's exit

[models]
models = ["{model}"]
instance_count = 2
sequence_idle_timeout = "{IDLE_S:g}s"

[models.faults]
hang_after_requests = 15

[workers]
count = 2
concurrency = {PLANS // 2}
shm = "none"

[scenarios]
sequence_length_mean = 4.0
sequence_length_stddev = 2.0
{extra}

{only_weights(sequence_no_end=100, sequence_valid=30)}
[detectors]
profile = "smoke"
window = "5s"
enabled = ["stall", "errors", "wrong_answers"]

[report]
live = "plain"
""")
    return path


def _run(config: Path, timeout: float) -> tuple[subprocess.CompletedProcess[str], Path]:
    done = subprocess.run([sys.executable, "-m", "engine", "--config", str(config)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    [run_dir] = list((config.parent / "results").iterdir())
    return done, run_dir


@pytest.mark.timeout(150)
def test_starts_waiting_for_a_slot_are_not_a_stall(tmp_path: Path) -> None:
    model = "sequence_nobatch_int32"
    done, run_dir = _run(_config(tmp_path, model, "35s"), timeout=140)
    out = done.stdout + done.stderr
    store = RunStore.open(run_dir / "run.sqlite")
    try:
        verdicts = [r.verdict for r in store.verdicts() if r.state != "info"]
        windows = [w for w in store.windows() if w.model == model]
    finally:
        store.close()
    assert windows, out
    # The other steps of a sequence take milliseconds: the longest request is a START's wait.
    longest_s = max(w.max_ms for w in windows) / 1000.0
    no_end = sum(w.requests for w in windows if w.scenario == "sequence_no_end")
    bound = start_bound_s(SMOKE, ModelTiming(0.0, 2, 0, sequence_idle_s=IDLE_S), PLANS, PLANS)
    print(f"longest START wait {longest_s:.1f} s; old threshold {SMOKE.floor_s:g} s; backlog bound with all "
          f"{PLANS} plans waiting {bound:.0f} s; {no_end} requests of sequences left open")
    assert no_end > 0, out
    # The backlog was real: STARTs waited longer than an idle timeout (often past the 5 s floor
    # that used to make them a STALL), yet inside the bound.
    assert IDLE_S < longest_s < bound, out
    assert [v.describe() for v in verdicts] == [], out
    assert done.returncode == 0, out


@pytest.mark.timeout(150)
def test_a_holder_that_hangs_is_a_stall(tmp_path: Path) -> None:
    model = "sequence_hang_int32"
    # Instance 0 blocks on a step of the sequence it holds. The hung step keeps T (5 s): a STALL
    # once that is past and the instance is named from its stub's CPU, or at 2 x T as "instance
    # unknown" (at this light load the idle stub's sweeper thread can use as much CPU as its
    # sibling serves). The hung plan ends at its 25 s deadline, after the load stops.
    done, run_dir = _run(_config(tmp_path, model, "35s"), timeout=140)
    out = done.stdout + done.stderr
    store = RunStore.open(run_dir / "run.sqlite")
    try:
        stalls = [r.verdict for r in store.verdicts() if r.verdict.kind == "STALL"]
        t, hung = store.series(f"truth/{model}_0_0/engine_model_hung_requests")
    finally:
        store.close()
    assert done.returncode == 1, out
    assert hung.max() == 1, out  # the model says it hung (its own metric, which no detector reads)
    assert stalls, out
    first = stalls[0]
    print(f"{first.describe()}; evidence {first.evidence}; detected {first.at_s - first.since_s:.1f} s "
          f"after the request began; the model hung by {t[hung > 0].min():.0f} s of the run")
    assert first.subject in (f"{model} instance {model}_0_0", f"{model} instance unknown",
                             f"{model} instances {model}_0_0"), out
    assert first.evidence["in_flight"] <= PLANS, out  # the model's own requests, not the run's
