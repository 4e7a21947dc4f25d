"""Windows and histograms: what the drift detector and every latency figure of a report rest on."""

from __future__ import annotations

import numpy as np

from engine.aggregator import LatencyHistogram, WindowFolder, merge_windows
from workers.telemetry import (
    STATUS_ERROR,
    STATUS_EXPECTED_ERROR,
    STATUS_OK,
    STATUS_WRONG,
    RecordBatch,
    RecordBuffer,
    decode_batch,
    pack,
    unpack,
)

S = 1_000_000_000
ORIGIN = 1_000 * S


def _batch(models: tuple[str, ...], scenarios: tuple[str, ...], rows: list[tuple], protocol: str = "grpc") -> RecordBatch:
    buffer = RecordBuffer(models, scenarios, protocol, capacity=max(1, len(rows)))
    for row in rows:
        buffer.add(*row)
    return decode_batch(unpack(pack("batch", "worker-0", 0, buffer.take_body())))


def test_percentiles_within_one_percent_and_merge_equals_one_histogram() -> None:
    rng = np.random.default_rng(3)
    values = (rng.lognormal(np.log(2e6), 1.0, 200_000)).astype(np.int64)
    whole, parts = LatencyHistogram(), LatencyHistogram()
    whole.add(values)
    for chunk in np.array_split(values, 7):
        part = LatencyHistogram()
        part.add(chunk)
        parts.merge(LatencyHistogram.from_bytes(part.to_bytes()))  # through the stored form
    for q in (50, 90, 95, 99, 99.9):
        exact = np.percentile(values, q, method="inverted_cdf")
        assert abs(whole.percentile(q) / exact - 1) < 0.01, q
        assert parts.percentile(q) == whole.percentile(q)
    assert whole.max_ns == values.max() and whole.count == len(values)
    assert abs(whole.mean_ns - values.mean()) < 1e-6 * values.mean()
    assert LatencyHistogram().percentile(50) == 0.0


def test_records_fold_by_completion_time_model_scenario_and_protocol() -> None:
    folder = WindowFolder(ORIGIN, window_s=1.0, lateness_s=0.5)
    # Started in window 0, completed in window 1: it counts in window 1.
    folder.add(_batch(("a", "b"), ("identity",), [
        (ORIGIN + S // 2, 7 * S // 10, 0, 0, STATUS_OK),
        (ORIGIN + S // 10, S // 10, 0, 0, STATUS_OK),
        (ORIGIN + S // 10, S // 10, 1, 0, STATUS_WRONG),
        (ORIGIN + S // 10, S // 10, 1, 0, STATUS_ERROR),
    ]))
    # Another sender whose name table is in another order: codes index the batch's own table.
    folder.add(_batch(("b", "a"), ("timeout", "identity"), [
        (ORIGIN + S // 5, S // 10, 1, 1, STATUS_OK),
        (ORIGIN + S // 5, S // 20, 0, 0, STATUS_EXPECTED_ERROR),
    ]))
    folder.add(_batch(("a",), ("identity",), [(ORIGIN + S // 5, S // 10, 0, 0, STATUS_OK)], protocol="http"))
    assert folder.close_until(ORIGIN + 1 * S) == []  # window 0 ends at 1 s, plus 0.5 s of lateness
    closed = folder.close_until(ORIGIN + 3 * S // 2)
    got = {(w.start_s, w.model, w.scenario, w.protocol): w for w in closed}
    assert set(got) == {(0.0, "a", "identity", "grpc"), (0.0, "b", "identity", "grpc"), (0.0, "b", "timeout", "grpc"),
                        (0.0, "a", "identity", "http")}
    a = got[(0.0, "a", "identity", "grpc")]
    assert (a.requests, a.ok) == (2, 2) and abs(a.p50_ms - 100) < 1  # the one from window 1 is not here
    b = got[(0.0, "b", "identity", "grpc")]
    assert (b.requests, b.ok, b.wrong, b.errors) == (2, 0, 1, 1) and abs(b.max_ms - 100) < 1e-6
    t = got[(0.0, "b", "timeout", "grpc")]
    assert (t.expected_errors, t.ok, t.p50_ms) == (1, 0, 0.0)  # an error's latency is not a latency
    [late_window] = folder.close_all()
    assert (late_window.start_s, late_window.requests) == (1.0, 1)
    assert merge_windows([*closed, late_window]).count == 5  # answered ones: ok and wrong


def test_late_records_go_to_the_oldest_open_window_and_are_counted() -> None:
    folder = WindowFolder(ORIGIN, window_s=1.0, lateness_s=0.0)
    folder.add(_batch(("a",), ("s",), [(ORIGIN + 3 * S, S // 10, 0, 0, STATUS_OK)]))
    folder.close_until(ORIGIN + 2 * S)  # windows 0 and 1 are closed (none held anything)
    folder.add(_batch(("a",), ("s",), [(ORIGIN + S // 10, S // 10, 0, 0, STATUS_OK)]))  # for window 0: late
    assert folder.late_records == 1
    rows = folder.close_all()
    assert [(w.start_s, w.requests) for w in rows] == [(2.0, 1), (3.0, 1)]
    assert sum(w.requests for w in rows) == 2  # nothing lost
