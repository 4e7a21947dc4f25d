"""The perf sweep's pure parts: stability rule, baseline gate, baseline files, overrides, the CSV
(the HTTP client's tests are in test_wire_http.py)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import orjson
import pytest

from engine.aggregator.histogram import LatencyHistogram
from engine.config import ConfigError, load_config, resolve_config_path
from engine.perf.baseline import (
    BaselineError,
    compare,
    load_baseline,
    render_gate,
    resolve_tolerances,
)
from engine.perf.output import (
    SCHEMA,
    SCHEMA_VERSION,
    csv_rows,
    point_to_dict,
    render_table,
)
from engine.perf.overrides import apply_perf_overrides
from engine.perf.plan import CLOSED, OPEN, PointSpec
from engine.perf.recorder import Recorder, close_window, merge_windows
from engine.perf.results import (
    FAILED,
    SKIPPED,
    PointResult,
    RequestCounts,
    measured_result,
)
from engine.perf.server_stats import ServerSplit, parse_stats, split
from engine.perf.stability import is_stable, spread

# -- stability -------------------------------------------------------------------------------


def test_stable_when_the_last_windows_agree_on_throughput_and_p99() -> None:
    assert is_stable([50, 100, 105, 110], [9, 1.0, 1.05, 1.1], count=3, tolerance=0.10)
    assert spread([100, 110]) == pytest.approx(0.10)


def test_unstable_when_either_figure_moves_or_too_few_windows() -> None:
    assert not is_stable([100, 100, 130], [1, 1, 1], 3, 0.10)  # throughput moved 30 %
    assert not is_stable([100, 100, 100], [1, 1, 1.5], 3, 0.10)  # p99 moved 50 %
    assert not is_stable([100, 100], [1, 1], 3, 0.10)  # not enough windows yet
    assert not is_stable([0, 0, 0], [0, 0, 0], 3, 0.10)  # nothing answered is never stable
    assert spread([]) == float("inf")


# -- recorder and figures --------------------------------------------------------------------


def _window(latencies_us: list[float], seconds: float = 1.0, errors: int = 0, batch: int = 1):
    recorder = Recorder()
    for value in latencies_us:
        recorder.ok(int(value * 1000), 10_000, 5_000)
    for _ in range(errors):
        recorder.error("boom")
    return close_window(recorder.swap(), seconds, batch)


def _result(spec: PointSpec, latencies_us: list[float], stable: bool = True, errors: int = 0) -> PointResult:
    windows = [_window(latencies_us, errors=errors), _window(latencies_us)]
    merged = merge_windows(windows)
    server = ServerSplit(100.0, 10.0, 200.0, 20.0, merged.requests, 0, merged.requests, merged.requests)
    counts = RequestCounts(check=1, warmup=5, measured=merged.requests, counted=merged.requests, errors=errors)
    return measured_result(spec, stable, "" if stable else "moved", windows, merged, 2, server, counts, {}, 1.0)


SPEC = PointSpec("identity_fp32", "grpc", "none", 1, 16, CLOSED, 1)


def test_window_figures_come_from_the_merged_histogram() -> None:
    result = _result(SPEC, [1000.0] * 99 + [5000.0])
    assert result.throughput == pytest.approx(100.0)  # 100 answers per 1 s window
    assert result.latency is not None
    assert result.latency.p50_us == pytest.approx(1000, rel=0.01)
    assert result.latency.p99_us == pytest.approx(1000, rel=0.01)
    assert result.latency.max_us == pytest.approx(5000)
    assert result.client_send_us == pytest.approx(10.0) and result.client_recv_us == pytest.approx(5.0)
    # avg 1040 us minus client 15 us minus server 330 us
    assert result.network_server_us == pytest.approx(1040 - 15 - 330, rel=0.01)


def test_batch_counts_inferences_not_requests() -> None:
    window = _window([1000.0] * 50, seconds=0.5, batch=4)
    assert window.throughput == pytest.approx(400.0)


def test_histogram_merge_equals_one_histogram() -> None:
    a, b = _window([100.0, 200.0]), _window([300.0])
    whole = LatencyHistogram()
    whole.add([100_000, 200_000, 300_000])
    assert merge_windows([a, b]).histogram == whole


def test_error_samples_are_bounded() -> None:
    recorder = Recorder()
    for i in range(100):
        recorder.error(f"error {i % 7}")
    assert len(recorder.error_samples) == 5 and recorder.current.errors == 100


# -- server statistics -------------------------------------------------------------------------


def _stats(success: int, queue_ns: int) -> bytes:
    stage = {"count": success, "ns": 0}
    return orjson.dumps({"model_stats": [{"name": "m", "version": "1", "inference_count": success,
                                          "execution_count": success, "inference_stats": {
                                              "success": stage, "fail": {"count": 0, "ns": 0},
                                              "queue": {"count": success, "ns": queue_ns},
                                              "compute_input": stage, "compute_infer": stage,
                                              "compute_output": stage}}]})


def test_server_split_is_a_per_request_delta() -> None:
    before, after = parse_stats(_stats(10, 1_000_000), "m"), parse_stats(_stats(110, 21_000_000), "m")
    result = split(after.minus(before))
    assert result.success == 100 and result.queue_us == pytest.approx(200.0)


def test_stats_of_another_model_are_refused() -> None:
    with pytest.raises(RuntimeError, match="no statistics"):
        parse_stats(_stats(1, 1), "other")


# -- baseline files ----------------------------------------------------------------------------


def _document(points: list[dict], **extra) -> dict:
    return {"schema": SCHEMA, "version": SCHEMA_VERSION, "run_id": "base", "points": points, **extra}


def _write(tmp_path: Path, document: dict | bytes, name: str = "base.json") -> Path:
    path = tmp_path / name
    path.write_bytes(document if isinstance(document, bytes) else orjson.dumps(document))
    return path


@pytest.mark.parametrize(("content", "message"), [
    (b"{not json", "not valid JSON"),
    (b"[]", "not a perf baseline"),
    (orjson.dumps({"schema": SCHEMA, "version": 99, "points": []}), "version 99"),
    (orjson.dumps({"schema": SCHEMA, "version": SCHEMA_VERSION, "points": [{"no": "key"}]}), "each with a \"key\""),
    (orjson.dumps({"schema": SCHEMA, "version": SCHEMA_VERSION, "points": [], "tolerances": {"p42": 1}}), "p42"),
    (orjson.dumps({"schema": SCHEMA, "version": SCHEMA_VERSION,
                   "points": [{"key": "k", "status": "stable"}]}), "lacks throughput"),
])
def test_bad_baselines_say_what_is_wrong(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(BaselineError, match=message):
        load_baseline(_write(tmp_path, content))


def test_missing_baseline(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="no such baseline file"):
        load_baseline(tmp_path / "nope.json")


# -- the gate ----------------------------------------------------------------------------------


def _gate(tmp_path: Path, run: list[PointResult], base: list[PointResult], tolerances: dict | None = None,
          ignore_unstable: bool = False):
    baseline = load_baseline(_write(tmp_path, _document([point_to_dict(r) for r in base],
                                                        **({"tolerances": tolerances} if tolerances else {}))))
    resolved = resolve_tolerances(0.05, 0.10, baseline)
    result = compare([point_to_dict(r) for r in run], baseline, resolved, ignore_unstable=ignore_unstable)
    return result, render_gate(result, baseline)


def test_same_figures_pass(tmp_path: Path) -> None:
    point = _result(SPEC, [1000.0] * 100)
    result, text = _gate(tmp_path, [point], [point])
    assert result.passed and "gate: PASS" in text
    assert {c.metric for c in result.comparisons} == {"throughput", "p99"}


def test_slower_run_fails_and_names_the_metric(tmp_path: Path) -> None:
    base = _result(SPEC, [1000.0] * 100)
    slow = _result(SPEC, [1000.0] * 60 + [2000.0] * 20)  # 80 answers a window instead of 100, p99 doubled
    result, text = _gate(tmp_path, [slow], [base])
    assert not result.passed
    assert {c.metric for c in result.regressions} == {"throughput", "p99"}
    assert "gate: FAIL" in text and "throughput -20.0 % (allowed -5.0 %)" in text and "REGRESSED" in text


def test_small_changes_within_tolerance_pass(tmp_path: Path) -> None:
    base = _result(SPEC, [1000.0] * 100)
    close = _result(SPEC, [1050.0] * 97)  # -3 % throughput, +5 % p99
    assert _gate(tmp_path, [close], [base])[0].passed


def test_baseline_tolerances_gate_more_metrics(tmp_path: Path) -> None:
    base = _result(SPEC, [1000.0] * 100)
    run = _result(SPEC, [1000.0] * 50 + [1080.0] * 50)  # p50 unchanged, avg +4 %, p99 +8 %
    result, _ = _gate(tmp_path, [run], [base], tolerances={"avg": 0.02, "p99": 0.5})
    assert [c.metric for c in result.regressions] == ["avg"]


def test_unstable_points_are_flagged_and_can_be_left_out_of_the_verdict(tmp_path: Path) -> None:
    base = _result(SPEC, [1000.0] * 100)
    slow = _result(SPEC, [2000.0] * 50, stable=False)
    result, text = _gate(tmp_path, [slow], [base])
    assert not result.passed and "REGRESSED (unstable)" in text
    result, text = _gate(tmp_path, [slow], [base], ignore_unstable=True)
    assert result.passed and "not gated" in text


def test_missing_new_skipped_and_failed_points_are_reported(tmp_path: Path) -> None:
    other = PointSpec("identity_fp32", "http", "none", 1, 16, CLOSED, 1)
    new = PointSpec("identity_fp32", "grpc", "none", 1, 16, OPEN, 100.0)
    cuda = PointSpec("identity_fp32", "grpc", "cuda", 1, 16, CLOSED, 1)
    base = [_result(SPEC, [1000.0] * 100), _result(other, [1000.0] * 100), _result(cuda, [1000.0] * 100)]
    run = [PointResult(SPEC, FAILED, "connection refused"), _result(new, [1000.0] * 100),
           PointResult(cuda, SKIPPED, "no GPU")]
    result, text = _gate(tmp_path, run, base)
    assert not result.passed and result.regressions[0].metric == "status"
    assert result.missing == (other.key,) and result.new == (new.key,)
    assert result.not_compared[0][0] == cuda.key
    assert f"missing from this run (in the baseline): {other.key}" in text
    assert f"new in this run (not in the baseline): {new.key}" in text and "no GPU" in text


def test_new_errors_regress(tmp_path: Path) -> None:
    base = _result(SPEC, [1000.0] * 100)
    errors = _result(SPEC, [1000.0] * 100, errors=3)
    result, _ = _gate(tmp_path, [errors], [base])
    assert [c.metric for c in result.regressions] == ["errors"]


def test_model_config_changes_are_noted(tmp_path: Path) -> None:
    point = point_to_dict(_result(SPEC, [1000.0] * 100))
    baseline = load_baseline(_write(tmp_path, _document([point], models={"identity_fp32": {"execute_delay_ms": 0.0}})))
    result = compare([point], baseline, {"throughput": 0.05}, {"identity_fp32": {"execute_delay_ms": 20.0}})
    assert result.notes == ("identity_fp32: execute_delay_ms is 20.0 in this run, 0.0 in the baseline",)


# -- outputs -----------------------------------------------------------------------------------


def test_csv_has_perf_analyzers_columns_and_the_json_figures() -> None:
    result = _result(SPEC, [1000.0] * 100)
    rows = list(csv.reader(io.StringIO("\n".join(",".join(r) for r in csv_rows([result], CLOSED)))))
    header, row = rows
    assert header[:14] == ["Concurrency", "Inferences/Second", "Client Send", "Network+Server Send/Recv",
                           "Server Queue", "Server Compute Input", "Server Compute Infer", "Server Compute Output",
                           "Client Recv", "p50 latency", "p90 latency", "p95 latency", "p99 latency", "Avg latency"]
    values = dict(zip(header, row))
    doc = point_to_dict(result)
    assert float(values["Inferences/Second"]) == pytest.approx(doc["throughput_infer_per_s"], abs=0.01)
    assert int(values["p99 latency"]) == round(doc["latency_us"]["p99"])
    assert int(values["Server Queue"]) == 100 and values["Model"] == "identity_fp32"
    assert csv_rows([result], OPEN) == [csv_rows([result], OPEN)[0]]  # no rate points: header only


def test_table_shows_every_point() -> None:
    cuda = PointSpec("identity_fp32", "grpc", "cuda", 1, 16, CLOSED, 1)
    text = render_table([_result(SPEC, [1000.0] * 100), PointResult(cuda, SKIPPED, "no GPU")])
    assert "stable" in text and "skipped" in text and "no GPU" in text


# -- overrides ---------------------------------------------------------------------------------


def test_overrides_replace_and_validate() -> None:
    config = load_config(resolve_config_path("perf.toml"), environ={})
    changed = apply_perf_overrides(config, {"concurrency": "2,4", "window": "1s", "models": "identity_bytes",
                                            "request_rates": "", "stability_tolerance": "0.2"})
    assert changed.perf.concurrency == (2, 4) and changed.perf.window == 1.0 and changed.perf.request_rates == ()
    assert changed.perf.models == ("identity_bytes",) and changed.perf.stability_tolerance == 0.2
    assert changed.perf.protocols == config.perf.protocols  # untouched keys keep the file's values
    with pytest.raises(ConfigError, match=r"perf.concurrency\[0\] = 0"):
        apply_perf_overrides(config, {"concurrency": "0"})
    with pytest.raises(ConfigError, match="not an integer"):
        apply_perf_overrides(config, {"concurrency": "many"})
    with pytest.raises(ConfigError, match="did you mean 'identity_fp32'"):
        apply_perf_overrides(config, {"models": "identity_fp33"})
