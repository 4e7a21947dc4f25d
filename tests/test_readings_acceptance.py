"""The detectors' readings (issue 19) on the real server, as a user gets them: `python -m engine`
against the bundled tritonserver with generated faulty models beside a healthy one, the verdicts
read back from the run's store.

Two runs, each holding the faults that do not disturb one another, with their negative controls:

- memory and drift: a ratchet (grows, frees part, grows) is a GROWTH that is never withdrawn as a
  PLATEAU, while the plateau model beside it, a cache that fills and stops, fails nothing; the
  memory verdicts of stubs say their bytes per request, close to what the model says it keeps; a
  model whose queue grows (its capacity is below the offered load) drifts with the added time in
  the server's queue, a model whose execution grows drifts with it in compute; a stub that keeps
  a file descriptor every few requests is a LEAK of fds; the healthy model and the server get
  nothing; the live p99 is the worst of the recent windows; report.html draws the growth's trend
  and the leaked descriptors' floor.
- deadlock: a model whose every instance deadlocks under open-loop load is one STALL, updated as
  the stall goes on, not repeated; the server's memory that its queue holds is a BACKLOG naming
  it, not a GROWTH of the server; its errors (requests timed out) point at the stall and fail
  nothing on their own; the healthy model gets nothing; report.html draws the backlog.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from engine.live_status import LiveStatus
from engine.store import RunStore, VerdictRow
from tests.server_helpers import only_weights

pytestmark = pytest.mark.timeout(420)

ROOT = Path(__file__).resolve().parents[1]
WINDOW_S = 5.0
RECENT_WINDOWS = 5  # the aggregator's live "recent p99" spans this many windows


def _detectors(warmup_s: float, leak_min_data_s: float) -> str:
    """The smoke profile's gates with short windows and warm-up, as in test_watch_acceptance.py."""
    return f"""
[detectors]
profile = "smoke"
window = "{WINDOW_S:g}s"
warmup = "{warmup_s:g}s"
leak_min_data = "{leak_min_data_s:g}s"
drift_min_requests = 10
"""


LEAK_BYTES = 16384
RATCHET_BYTES = 65536
RATCHET_FREE = 0.6
# 80 requests/s spread over seven models: about 11.4/s each. queue_drift_fp32 serves at most
# 1000 / 95 = 10.5/s, so its queue grows by 1/s or so: about 15 s of queue after 150 s, within the
# identity plan's 30 s deadline (no request times out). Drift needs warm-up (6 windows), baseline
# (6) and current (12) windows, then 3 evaluations in a row: 135 s at the least.
MEMORY_AND_DRIFT = {
    "models": ("identity_fp32", "leak_fp32", "ratchet_fp32", "plateau_fp32", "queue_drift_fp32",
               "compute_drift_fp32", "fd_leak_fp32"),
    "faults": f"""
leak_bytes_per_request = {LEAK_BYTES}
ratchet_bytes_per_request = {RATCHET_BYTES}
ratchet_period = "6s"
ratchet_free_fraction = {RATCHET_FREE}
plateau_bytes = 50331648          # 48 MiB, two thirds of it in the first 15 s: still growing after
plateau_time_constant = "15s"     # warm-up, below the gate from about 80 s on
queue_drift_service_ms = 95.0
compute_drift_base_ms = 10.0
compute_drift_ms_per_minute = 40.0
compute_drift_onset = "62s"       # after the model loads: just after the drift baseline (30-60 s of the run)
fd_leak_every = 5                 # about 2 fds a second: the floor of 10 s bins rises in every bin
""",
    "rate": 40.0,
    "duration": "150s",
    "detectors": _detectors(warmup_s=30.0, leak_min_data_s=20.0),
}
# 25 requests/s to each model; each instance of deadlock_fp32 serves 250 requests, so the model
# stops answering about 20 s into the run, as warm-up ends. Its queue, and the server's memory,
# grow from there; the stuck requests' plans give up 30 s later (identity's deadline), and from then
# on the server's queue does not follow the load alone (the cancelled requests leave it, for a
# while), so the backlog is judged on the 30 s before: warm-up 20 s and 15 s of data.
DEADLOCK = {
    "models": ("identity_fp32", "deadlock_fp32"),
    "faults": "deadlock_after_requests = 250\n",
    "rate": 25.0,
    "duration": "75s",
    "detectors": _detectors(warmup_s=20.0, leak_min_data_s=15.0),
}


@dataclass
class Run:
    """What a finished run left: its verdicts, resource series and windows, from the store."""

    run_dir: Path
    output: str
    returncode: int
    rows: list[VerdictRow]
    series: dict[str, tuple[np.ndarray, np.ndarray]]
    windows: list
    status: LiveStatus | None
    incidents: list[tuple[float, str]]

    def failing(self) -> list:
        return [r.verdict for r in self.rows if r.state in ("open", "cleared")]

    def described(self) -> str:
        return "\n".join(f"#{r.id} [{r.state}] {r.verdict.describe()}" for r in self.rows)


def _engine_run(tmp_path: Path, plan: dict) -> Run:
    path = tmp_path / "run.toml"
    path.write_text(f"""
[run]
duration = "{plan['duration']}"
seed = 19
results_dir = "{tmp_path / 'results'}"

[server]
extra_args = ["--exit-timeout-secs=2"]   # a deadlocked instance must not hold the server's exit

[models]
models = {list(plan['models'])!r}
instance_count = {plan.get('instances', 2)}

[models.faults]
{plan['faults']}
[workers]
count = 2
shm = "system"
load = "constant"                 # open loop: a slow or stuck model does not slow the others' load
rate = {plan['rate']}
max_outstanding = 2048

{only_weights(identity=1)}
{plan['detectors']}
[report]
live = "plain"
""")
    done = subprocess.run([sys.executable, "-m", "engine", "--config", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=360)
    [run_dir] = list((tmp_path / "results").iterdir())
    store = RunStore.open(run_dir / "run.sqlite")
    try:
        run = Run(run_dir, done.stdout + done.stderr, done.returncode, store.verdicts(),
                  {name: store.series(name) for name in store.series_names()}, store.windows(), store.status(),
                  store.incidents())
    finally:
        store.close()
    crashed = [what for _, what in run.incidents if what.startswith("the server exited (status -")]
    if crashed:
        # Seen once in a dozen runs: a python backend stub died of a general protection fault in
        # the stub binary (kernel log: "traps: triton_python_b[...] general protection fault ... in
        # triton_python_backend_stub"), and the server aborted on the stub's broken IPC mutex
        # (boost::interprocess::lock_exception). A fault of the bundled server (2.51), found and
        # reported by the run as it should be; the readings of a run cut in two say nothing.
        pytest.skip(f"the server itself crashed during the run ({crashed[0]}): no reading to judge")
    return run


@pytest.fixture(scope="module")
def memory_and_drift(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _engine_run(tmp_path_factory.mktemp("memory_and_drift"), {**MEMORY_AND_DRIFT, "instances": 1})


@pytest.fixture(scope="module")
def deadlock(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _engine_run(tmp_path_factory.mktemp("deadlock"), DEADLOCK)


def _about(subject: str, model: str) -> bool:
    """A verdict's subject names the model, or a stub process of it."""
    return subject.startswith(f"{model} ") or f"stub/{model}_" in subject


def _truth_per_request(run: Run, model: str, since_s: float, until_s: float) -> float:
    """Bytes the model says it kept per request it answered over [since_s, until_s]: its ground
    truth metric (one instance) against its answered requests in the windows of that span."""
    t, held = run.series[f"truth/{model}_0_0/engine_model_retained_bytes"]
    span = (t >= since_s) & (t <= until_s)
    answered = sum(w.ok for w in run.windows if w.model == model and since_s <= w.start_s
                   and w.start_s + w.length_s <= until_s)
    seconds = sum(w.length_s for w in run.windows if w.model == model and since_s <= w.start_s
                  and w.start_s + w.length_s <= until_s)
    rate = answered / seconds
    slope = float(np.polyfit(t[span], held[span], 1)[0])  # bytes per second
    return slope / rate


# -- memory and drift -----------------------------------------------------------------------------------
def test_the_ratchet_is_a_growth_and_never_a_plateau(memory_and_drift: Run) -> None:
    run = memory_and_drift
    assert run.returncode == 1, run.output  # failing verdicts
    ratchet = [r for r in run.rows if "stub/ratchet_fp32_" in r.verdict.subject]
    assert [r.verdict.kind for r in ratchet] == ["GROWTH"], run.described()
    assert ratchet[0].state == "open", run.described()  # not withdrawn: no asymptote was ever seen
    growth = ratchet[0].verdict
    # The sawtooth is real: the stub gave memory back (its RssAnon fell by at least a chunk).
    t, rss = run.series["proc/stub/ratchet_fp32_0_0/rss_anon"]
    late = t >= 30.0
    assert np.min(np.diff(rss[late])) < -(1 << 20), "the ratchet never freed anything"
    print(f"ratchet: {growth.describe()}; evidence {growth.evidence}")


def _model_of(subject: str) -> str:
    """The model a verdict is about: its subject's first word, or the model of its stub."""
    if "stub/" in subject:
        return subject.split("stub/", 1)[1].split(" ", 1)[0].rsplit("_", 2)[0]
    return subject.split(" ", 1)[0]


def test_each_fault_is_said_once_with_its_reading(memory_and_drift: Run) -> None:
    run = memory_and_drift
    said = sorted((v.kind, _model_of(v.subject)) for v in run.failing())
    assert said == [("DRIFT", "compute_drift_fp32"), ("DRIFT", "queue_drift_fp32"), ("GROWTH", "leak_fp32"),
                    ("GROWTH", "ratchet_fp32"), ("LEAK", "fd_leak_fp32")], run.described()


def test_the_plateau_the_healthy_model_and_the_server_fail_nothing(memory_and_drift: Run) -> None:
    run = memory_and_drift
    for v in run.failing():
        assert not _about(v.subject, "identity_fp32") and not _about(v.subject, "plateau_fp32"), run.described()
        assert not v.subject.startswith("server"), run.described()
        assert v.subject != "all models", run.described()
    # What the plateau may get is information: a PLATEAU, or a GROWTH it withdrew.
    plateau = [r for r in run.rows if _about(r.verdict.subject, "plateau_fp32")]
    assert all(r.state in ("info", "withdrawn") for r in plateau), run.described()
    # The server holds queue_drift_fp32's queue: a BACKLOG of it, or a growth (its memory also
    # warms up beyond 30 s under this load) withdrawn as a PLATEAU, is information; nothing fails.
    server = [r for r in run.rows if r.verdict.subject.startswith("server")]
    assert all(r.state in ("info", "withdrawn") for r in server), run.described()
    backlogs = [r.verdict for r in server if r.verdict.kind == "BACKLOG"]
    assert all(v.subject.endswith("queue of queue_drift_fp32") for v in backlogs), run.described()


def test_memory_verdicts_of_stubs_say_bytes_per_request(memory_and_drift: Run) -> None:
    run = memory_and_drift
    for model, nominal in (("leak_fp32", LEAK_BYTES), ("ratchet_fp32", RATCHET_BYTES * (1 - RATCHET_FREE))):
        [growth] = [v for v in run.failing() if v.kind == "GROWTH" and f"stub/{model}_" in v.subject]
        said = growth.evidence["bytes_per_request"]
        truth = _truth_per_request(run, model, growth.since_s, growth.at_s)
        print(f"{model}: {said:,.0f} bytes/request [{growth.evidence['bytes_per_request_low']:,.0f}, "
              f"{growth.evidence['bytes_per_request_high']:,.0f}], truth {truth:,.0f}, nominal {nominal:,.0f}")
        assert nominal / 2 <= truth <= nominal * 2, (model, truth)  # the model did what it was told
        assert truth / 1.5 <= said <= truth * 1.5, (model, said, truth)
        assert "bytes/request" in growth.describe()


def _drift(run: Run, model: str):
    found = [v for v in run.failing() if v.kind == "DRIFT" and v.subject.startswith(f"{model} ")]
    assert len(found) == 1, run.described()
    return found[0]


def test_a_growing_queue_drifts_in_the_queue(memory_and_drift: Run) -> None:
    run = memory_and_drift
    drift = _drift(run, "queue_drift_fp32")
    e = drift.evidence
    print(f"queue drift: {drift.describe()}")
    assert e["added_queue_ms"] > 0.5 * e["added_ms"], e
    assert abs(e["added_compute_ms"]) < 0.05 * e["added_queue_ms"], e  # its compute did not move


def test_a_growing_execution_drifts_in_compute(memory_and_drift: Run) -> None:
    run = memory_and_drift
    drift = _drift(run, "compute_drift_fp32")
    e = drift.evidence
    print(f"compute drift: {drift.describe()}")
    assert e["added_compute_ms"] > 0.5 * e["added_ms"], e
    assert e["added_compute_ms"] > 3 * abs(e["added_queue_ms"]), e
    assert not [v for v in run.failing() if v.kind == "DRIFT" and _about(v.subject, "identity_fp32")]


def test_the_live_p99_is_the_worst_of_the_recent_windows(memory_and_drift: Run) -> None:
    run = memory_and_drift
    assert run.status is not None and run.status.final, run.output
    answered = [w for w in run.windows if w.ok + w.wrong]
    newest = max(w.start_s for w in answered)
    recent = [w.p99_ms for w in answered if w.start_s >= newest - (RECENT_WINDOWS - 1) * WINDOW_S]
    assert run.status.p99_recent_ms == pytest.approx(max(recent))
    assert run.status.p99_ms == pytest.approx(max(w.p99_ms for w in answered if w.start_s == newest))


def test_kept_descriptors_are_a_leak_of_fds(memory_and_drift: Run) -> None:
    run = memory_and_drift
    [leak] = [v for v in run.failing() if v.kind == "LEAK"]
    assert leak.subject.startswith("stub/fd_leak_fp32_0_0 (pid ") and leak.subject.endswith(" fds"), leak
    # Its rate against the model's own count of the descriptors it kept over the same bins.
    t, kept = run.series["truth/fd_leak_fp32_0_0/engine_model_leaked_fds"]
    span = (t >= leak.since_s) & (t <= leak.at_s)
    truth = float(np.polyfit(t[span] / 3600.0, kept[span], 1)[0])
    print(f"fd leak: {leak.describe()}; truth {truth:.0f} fds/h")
    assert truth / 2 <= leak.size <= truth * 2, (leak.size, truth)


def test_report_draws_the_growth_trend_and_the_leaked_floor(memory_and_drift: Run) -> None:
    page = (memory_and_drift.run_dir / "report.html").read_text()
    assert "stub/ratchet_fp32_0_0: RssAnon with the GROWTH trend" in page
    [leak] = [v for v in memory_and_drift.failing() if v.kind == "LEAK"]
    assert f"{leak.subject}: {leak.size:.3g} {leak.unit} (LEAK; dashed: its floor)" in page


# -- deadlock -------------------------------------------------------------------------------------------
def test_a_deadlock_under_open_loop_is_one_stall(deadlock: Run) -> None:
    run = deadlock
    assert run.returncode == 1, run.output
    stalls = [r for r in run.rows if r.verdict.detector == "stall"]
    assert len(stalls) == 1, run.described()  # one fault, one verdict
    [row] = stalls
    stall = row.verdict
    assert row.state == "open" and stall.kind == "STALL" and stall.subject.startswith("deadlock_fp32"), \
        run.described()
    # Updated as the stall went on: seen after it was said, and for longer than its threshold.
    assert stall.evidence["last_seen_s"] > stall.at_s + WINDOW_S, stall.evidence
    assert stall.size > stall.evidence["threshold_s"], stall.evidence
    assert stall.evidence["deadlock"] == 1.0, stall.evidence  # its stubs used no CPU: blocked, not spinning
    print(f"stall: {stall.describe()}; evidence {stall.evidence}")


def test_a_deadlocked_models_queue_is_a_backlog_not_a_server_growth(deadlock: Run) -> None:
    run = deadlock
    server = [r for r in run.rows if r.verdict.subject.startswith("server")]
    assert [r.verdict.kind for r in server] == ["BACKLOG"], run.described()
    [row] = server
    backlog = row.verdict
    assert row.state == "info" and backlog.subject.endswith(": queue of deadlock_fp32"), run.described()
    # Bytes per queued request against what the server's memory and its queue did over the same span.
    t, rss = run.series["proc/server/rss_anon"]
    tq, queued = run.series["model/deadlock_fp32/pending"]
    span, queue_span = (t >= backlog.since_s) & (t <= backlog.at_s), (tq >= backlog.since_s) & (tq <= backlog.at_s)
    truth = float(np.polyfit(t[span], rss[span], 1)[0] / np.polyfit(tq[queue_span], queued[queue_span], 1)[0])
    print(f"backlog: {backlog.describe()}; truth {truth:,.0f} bytes per queued request")
    assert truth / 1.5 <= backlog.evidence["bytes_per_queued_request"] <= truth * 1.5, (backlog.evidence, truth)
    # The healthy model beside it gets nothing.
    assert not [v for v in run.failing() if _about(v.subject, "identity_fp32")], run.described()
    page = (run.run_dir / "report.html").read_text()
    assert f"{backlog.subject}: requests waiting in the server (BACKLOG" in page


def test_errors_of_the_stalled_model_point_at_the_stall(deadlock: Run) -> None:
    run = deadlock
    [stall_id] = [r.id for r in run.rows if r.verdict.detector == "stall"]
    errors = [r for r in run.rows if r.verdict.detector == "errors"]
    # The stuck requests' plans gave up after their 30 s deadline, within the run: errors there are.
    assert errors and all(_about(r.verdict.subject, "deadlock_fp32") for r in errors), run.described()
    for r in errors:
        assert r.state == "info" and r.verdict.evidence.get("stall_verdict_id") == stall_id, run.described()
    # Everything that fails the run is the stall.
    assert [v.detector for v in run.failing()] == ["stall"], run.described()
