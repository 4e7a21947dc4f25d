"""The library API: configs from dicts and files with the command line's one-line errors, results
read from real stores (also a killed run's), and real runs from Python, one after the other in one
process, with their lines going to a callback or a logger and never to stdout."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import engine
from engine.config import SCENARIOS
from engine.live_status import LiveStatus
from engine.store import RunStore

pytestmark = pytest.mark.timeout(60)

MODELS = ["identity_fp32", "sequence_int32"]
# Only the scenarios these two models serve; one worker; 10 s of load.
SMALL = {
    "run": {"duration": "10s"},
    "models": {"models": MODELS, "instance_count": 1},
    "workers": {"count": 1},
    "detectors": {"profile": "smoke"},
    "scenarios": {"weights": {name: 100 if name in ("identity", "sequence_valid") else 0 for name in SCENARIOS}},
}


# -- configs ---------------------------------------------------------------------------------------
def test_a_dict_config_reads_as_the_toml_would() -> None:
    config = engine.as_config({"run": {"duration": "90s", "seed": 7}, "workers": {"count": 3}})
    assert (config.run.duration, config.run.seed, config.workers.count) == (90.0, 7, 3)
    assert config.source is None


@pytest.mark.parametrize("data,message", [
    ({"run": {"duraton": "1m"}}, "<config>: unknown key [run] duraton = \"1m\"; did you mean 'duration'?"),
    ({"workers": {"count": 0}}, "<config>: workers.count = 0: must be from 1 to 1024"),
    ({"wokers": {}}, "<config>: unknown section [wokers]; did you mean [workers]?"),
])
def test_a_bad_dict_config_raises_the_one_line_config_error(data: dict, message: str) -> None:
    with pytest.raises(engine.ConfigError) as raised:
        engine.run(data)
    assert str(raised.value) == message


def test_make_config_merges_sections_as_toml_tables_merge(tmp_path: Path) -> None:
    base = tmp_path / "base.toml"
    base.write_text('[run]\nduration = "5m"\nseed = 3\n[scenarios.weights]\nidentity = 5\n')
    config = engine.make_config(base, run={"duration": "30s"}, scenarios={"weights": {"timeout": 0}})
    assert (config.run.duration, config.run.seed) == (30.0, 3)  # the base's other keys stay
    assert config.scenarios.weights["identity"] == 5 and config.scenarios.weights["timeout"] == 0
    assert config.source == base
    with pytest.raises(engine.ConfigError, match=r"base\.toml: workers\.shm = \"shared\": must be one of"):
        engine.make_config(base, workers={"shm": "shared"})  # the file is named in the error


@pytest.mark.parametrize("name", ["smoke", "long", "very-long", "perf"])
def test_make_config_of_a_config_changes_only_what_it_is_given(name: str) -> None:
    config = engine.as_config(name)
    assert engine.make_config(config) == config
    changed = engine.make_config(config, workers={"count": 5})
    assert changed.workers.count == 5 and changed.models == config.models and changed.run == config.run


def test_a_config_of_the_wrong_kind_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="expected a Config, a TOML path or a dict, got int"):
        engine.as_config(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="live='line'"):
        engine.run(SMALL, live="line")


def test_import_engine_leaves_the_report_machinery_unloaded() -> None:
    # Every worker process unpickles a config section and so imports `engine`: it must stay quick.
    code = "import sys, engine; print(sorted(m for m in ('engine.report', 'scipy', 'engine.coordinator') " \
           "if m in sys.modules)); engine.VerdictEntry; print('engine.report' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split("\n")[:2] == ["[]", "True"], done.stderr


def test_the_main_module_is_hidden_from_spawned_children_only_while_runs_go_on() -> None:
    from engine.library._main_module import main_module_hidden

    main = sys.modules["__main__"]
    before = {name: main.__dict__.get(name, "absent") for name in ("__file__", "__spec__")}
    with main_module_hidden():
        with main_module_hidden():  # a second run at once (another thread) shares the hiding
            assert main.__spec__ is None and "__file__" not in main.__dict__
        assert main.__spec__ is None and "__file__" not in main.__dict__  # the first run still goes on
    assert {name: main.__dict__.get(name, "absent") for name in ("__file__", "__spec__")} == before


# -- results from stores ----------------------------------------------------------------------------
def _killed_run_store(run_dir: Path) -> None:
    """A store as a run killed mid-way leaves it: totals, an incident, no final figures."""
    run_dir.mkdir(parents=True)
    store = RunStore.create(run_dir / "run.sqlite", run_dir.name, json.dumps({"config": {}}), "2026-12-06T03:00:00")
    store.set_totals([("identity", 40, 2, 40), ("sequence_valid", 5, 0, 80)])
    store.add_incident(3.5, "worker 0 exited (status -9); replaced")
    store.add_event(2.0, "worker-0", "scenario_failed", "identity_fp32", "identity",
                    1, "identity_fp32 step 0: OUTPUT0 [1.0] != expected [2.0] (shape [1])")
    store.set_status(LiveStatus(time_s=12.0))
    store.commit()
    store.close()


def test_open_run_reads_a_killed_runs_store(tmp_path: Path) -> None:
    run_dir = tmp_path / "20261206-030000-abcd"
    _killed_run_store(run_dir)
    result = engine.open_run(run_dir)
    assert (result.verdict, result.exit_code, result.passed, result.ended_normally) == ("FAIL", 1, False, False)
    rows = [(s.scenario, s.plans, s.failed) for s in result.scenarios]
    assert rows == [("identity", 40, 2), ("sequence_valid", 5, 0)]
    assert result.incidents == (engine.Incident(3.5, "worker 0 exited (status -9); replaced"),)
    assert result.files.store == run_dir / "run.sqlite" and result.files.report_json is None
    assert result.duration_s == 12.0
    explained = result.explain()
    for text in ("run 20261206-030000-abcd: FAIL (exit 1)", "did not end normally", "identity: 2 of 40 plans failed",
                 "OUTPUT0 [1.0] != expected [2.0]", "incident at 4 s: worker 0 exited"):
        assert text in explained
    assert repr(result).startswith("RunResult(FAIL: identity: 2/40 plans failed; did not end normally; run_dir=")
    with pytest.raises(engine.StressFailed) as raised:
        result.check()
    assert isinstance(raised.value, AssertionError) and str(raised.value) == explained


def test_a_run_that_recorded_nothing_explains_itself_from_what_it_said(tmp_path: Path) -> None:
    from engine.library._result import result_from_report

    said = ("  identity_fp32  FAIL  0.10  OUTPUT0 differs", "verdict: FAIL (a model did not answer its validated "
            "request; no load was sent)")
    result = result_from_report(None, tmp_path / "run-x", exit_code=1, output=said)
    assert (result.verdict, result.passed, result.report, result.scenarios) == ("FAIL", False, None, ())
    assert result.explain().endswith("the run said, last:\n" + "\n".join(f"    {line}" for line in said))
    assert "recorded nothing" in result.explain()


def test_open_run_of_a_directory_without_a_store_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no run store at"):
        engine.open_run(tmp_path)


def test_a_scenario_without_its_models_is_a_plan_error_before_any_server(tmp_path: Path) -> None:
    config = {**SMALL, "models": {"models": ["identity_fp32"]}, "run": {"results_dir": str(tmp_path)}}
    with pytest.raises(engine.PlanError, match="sequence_valid"):
        engine.run(config)


# -- real runs --------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_two_runs_in_one_process_report_to_a_callback_and_a_logger(tmp_path: Path, capfd: pytest.CaptureFixture,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    config = engine.make_config(SMALL, run={"results_dir": str(tmp_path)})
    lines: list[str] = []
    first = engine.run(config, progress=lines.append)

    caplog.set_level(logging.INFO, logger="engine.run")
    second = engine.run(config)  # the default: the "engine.run" logger

    assert capfd.readouterr().out == ""  # never to stdout unless asked
    for result, said in ((first, lines), (second, [r.getMessage() for r in caplog.records])):
        assert result.passed, result.explain()
        assert (result.verdict, result.exit_code, result.ended_normally) == ("PASS", 0, True)
        assert said[0] == f"run {result.run_id}: results in {result.run_dir}"
        assert list(result.output) == said and not any("\n" in line for line in said)
        assert any(line.startswith("verdict: PASS") for line in said)  # the summary, through the same sink
        rows = {s.scenario: s for s in result.scenarios}
        assert rows["identity"].requests > 0 and rows["sequence_valid"].plans > 0
        assert all(s.failed == 0 for s in result.scenarios)
        assert result.failing == () and result.incidents == ()
        assert {lat.model for lat in result.latency} == set(MODELS)
        assert result.files.report_json is not None and result.files.report_html is not None
        reread = engine.open_run(result.run_dir)
        assert (reread.verdict, reread.scenarios, reread.verdicts) == (result.verdict, result.scenarios,
                                                                       result.verdicts)
        assert result.windows(model="identity_fp32") and "proc/server/rss_anon" in result.series_names()
        times, values = result.series("proc/server/rss_anon")
        assert len(times) == len(values) > 3 and values.min() > 0
    assert first.run_dir != second.run_dir and first.run_dir.parent == second.run_dir.parent == tmp_path


@pytest.mark.timeout(300)
def test_a_run_in_a_thread_stops_gracefully_when_its_caller_says_so(tmp_path: Path) -> None:
    config = engine.make_config(SMALL, run={"results_dir": str(tmp_path), "duration": "10m"})
    stop = threading.Event()
    loaded = threading.Event()
    results: list[engine.RunResult] = []

    def progress(line: str) -> None:
        if " requests, " in line:  # a live progress line: the load is flowing
            loaded.set()

    thread = threading.Thread(target=lambda: results.append(engine.run(config, progress=progress, stop=stop)))
    started = time.monotonic()
    thread.start()
    assert loaded.wait(180), "no progress line within 180 s"
    stop.set()
    thread.join(240)
    assert results and time.monotonic() - started < 240  # long before its 10 minutes
    result = results[0]
    assert any("stop requested by the caller; stopping gracefully" in i.what for i in result.incidents)
    assert result.ended_normally and sum(s.requests for s in result.scenarios) > 0
