"""Windows and histograms: what the drift detector and every latency figure of a report rest on."""

from __future__ import annotations

import collections
import struct
import tracemalloc

import numpy as np
import pytest

from engine.aggregator import LatencyHistogram, WindowFolder, merge_windows
from engine.window_stats import WindowStats
from workers.telemetry import (
    STATUS_ERROR,
    STATUS_EXPECTED_ERROR,
    STATUS_MISSING_ERROR,
    STATUS_OK,
    STATUS_WRONG,
    RecordBatch,
    RecordBuffer,
    decode_batch,
    pack,
    unpack,
)

S = 1_000_000_000
MS = 1_000_000
ORIGIN = 1_000 * S


def _batch(models: tuple[str, ...], scenarios: tuple[str, ...], rows: list[tuple],
           protocol: str = "grpc") -> RecordBatch:
    """Rows (start_ns, latency_ns, model code, scenario code, status) through the real wire format."""
    buffer = RecordBuffer(models, scenarios, protocol, capacity=max(1, len(rows)))
    for row in rows:
        buffer.add(*row)
    return decode_batch(unpack(pack("batch", "worker-0", 0, buffer.take_body())))


def _by_key(rows: list[WindowStats]) -> dict[tuple[float, str, str, str], WindowStats]:
    return {(w.start_s, w.model, w.scenario, w.protocol): w for w in rows}


# -- histogram ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.0])
def test_percentiles_within_one_percent_of_exact(sigma: float) -> None:
    rng = np.random.default_rng(3)
    values = rng.lognormal(np.log(2e6), sigma, 100_000).astype(np.int64)
    h = LatencyHistogram()
    h.add(values)
    for q in (0.1, 1, 10, 25, 50, 75, 90, 95, 99, 99.9, 99.99):
        exact = np.percentile(values, q, method="inverted_cdf")
        assert abs(h.percentile(q) / exact - 1) < 0.01, (q, h.percentile(q), exact)
    assert h.percentiles([50, 99]) == [h.percentile(50), h.percentile(99)]
    assert h.percentile(100) == h.max_ns == values.max()
    assert h.count == len(values) and h.sum_ns == int(values.sum())
    assert h.mean_ns == pytest.approx(values.mean(), rel=1e-12)


def test_empty_histogram_and_bad_percentile() -> None:
    h = LatencyHistogram()
    assert (h.percentile(50), h.mean_ns, h.max_ns, h.count) == (0.0, 0.0, 0, 0)
    h.add(np.array([], dtype=np.int64))
    assert h.count == 0
    with pytest.raises(ValueError, match="0..100"):
        h.percentile(101)


def test_values_outside_the_range_are_clamped_and_counted() -> None:
    h = LatencyHistogram()
    h.add(np.array([1, 500, 2 * 3_600 * S, 50 * 3_600 * S], dtype=np.int64))  # under 1 us, over 1 h
    assert h.count == 4 and h.max_ns == 50 * 3_600 * S  # the exact figures are not clamped
    assert 1_000 <= h.percentile(50) <= 1_010  # the first bucket
    assert h.percentile(75) > 3_600 * S  # the last bucket, at least 1 h
    assert h.sum_ns == 1 + 500 + 52 * 3_600 * S


def test_merge_equals_adding_everything_to_one() -> None:
    rng = np.random.default_rng(5)
    values = rng.lognormal(np.log(5e6), 1.0, 50_000).astype(np.int64)
    whole, parts = LatencyHistogram(), LatencyHistogram()
    whole.add(values)
    for chunk in np.array_split(values, 7):
        part = LatencyHistogram()
        part.add(chunk)
        parts.merge(part)
    assert parts == whole
    assert [parts.percentile(q) for q in (50, 99)] == [whole.percentile(q) for q in (50, 99)]
    parts.clear()
    assert parts == LatencyHistogram()


@pytest.mark.parametrize("scale", [1, 300, 70_000, 5_000_000_000])
def test_bytes_round_trip_exactly_and_sparse(scale: int) -> None:
    rng = np.random.default_rng(7)
    h = LatencyHistogram()
    h.add(rng.lognormal(np.log(3e6), 0.5, 2_000).astype(np.int64))
    h.counts *= scale  # counts that need 1, 2, 4 and 8 bytes a bucket
    h.count *= scale
    h.sum_ns *= scale
    data = h.to_bytes()
    back = LatencyHistogram.from_bytes(data)
    assert back == h and back.sum_ns == h.sum_ns and back.max_ns == h.max_ns
    assert back.percentile(99) == h.percentile(99)
    buckets = int(np.count_nonzero(h.counts))
    assert len(data) < 40 + buckets * 10  # sparse: nothing for the empty buckets
    if scale == 1:
        assert len(data) < 40 + buckets * 3  # small counts take one byte each
    back.add(np.array([1_000_000]))  # what from_bytes returns is an ordinary, writable histogram
    assert back.count == h.count + 1


def test_bytes_empty_corrupt_and_the_older_format() -> None:
    assert LatencyHistogram.from_bytes(LatencyHistogram().to_bytes()) == LatencyHistogram()
    assert LatencyHistogram.from_bytes(b"") == LatencyHistogram()
    h = LatencyHistogram()
    h.add(np.array([2 * MS, 2 * MS, 7 * MS]))
    with pytest.raises(ValueError, match="does not match"):
        LatencyHistogram.from_bytes(h.to_bytes()[:-1])
    with pytest.raises(ValueError, match="shorter than its header"):
        LatencyHistogram.from_bytes(h.to_bytes()[:10])
    with pytest.raises(ValueError, match="format 9"):
        LatencyHistogram.from_bytes(b"\x09" + h.to_bytes()[1:])
    # Version 1 (stores written before the variable count width) still reads.
    index = np.flatnonzero(h.counts)
    v1 = struct.pack("<BIdqq", 1, len(index), float(h.sum_ns), h.max_ns, h.count) \
        + index.astype("<u2").tobytes() + h.counts[index].astype("<i8").tobytes()
    assert LatencyHistogram.from_bytes(v1) == h


# -- windows -----------------------------------------------------------------------------------

def test_a_record_counts_in_the_window_where_it_completed() -> None:
    folder = WindowFolder(ORIGIN, window_s=1.0, lateness_s=0.0)
    folder.add(_batch(("a",), ("s",), [
        (ORIGIN + S // 2, 7 * S // 10, 0, 0, STATUS_OK),  # started in window 0, completed in 1
        (ORIGIN + S // 10, 100 * MS, 0, 0, STATUS_OK),
        (ORIGIN + S - 1, 1, 0, 0, STATUS_OK),  # completes exactly at 1 s: window 1
    ]))
    rows = folder.close_all()
    assert [(w.start_s, w.requests) for w in rows] == [(0.0, 1), (1.0, 2)]
    assert rows[0].p50_ms == pytest.approx(100, rel=0.01)
    assert rows[1].max_ms == pytest.approx(700)


def test_grouping_by_names_not_codes_across_senders_and_protocols() -> None:
    folder = WindowFolder(ORIGIN, window_s=1.0, lateness_s=0.5)
    folder.add(_batch(("a", "b"), ("identity",), [
        (ORIGIN + S // 10, 100 * MS, 0, 0, STATUS_OK),
        (ORIGIN + S // 10, 100 * MS, 1, 0, STATUS_WRONG),
        (ORIGIN + S // 10, 100 * MS, 1, 0, STATUS_ERROR),
    ]))
    # Another sender whose name tables are in another order: its codes index its own tables.
    folder.add(_batch(("b", "a"), ("timeout", "identity"), [
        (ORIGIN + S // 5, 100 * MS, 1, 1, STATUS_OK),  # a / identity
        (ORIGIN + S // 5, 50 * MS, 0, 0, STATUS_EXPECTED_ERROR),  # b / timeout
    ]))
    folder.add(_batch(("a",), ("identity",), [(ORIGIN + S // 5, 300 * MS, 0, 0, STATUS_OK)], protocol="http"))
    got = _by_key(folder.close_all())
    assert set(got) == {(0.0, "a", "identity", "grpc"), (0.0, "b", "identity", "grpc"),
                        (0.0, "b", "timeout", "grpc"), (0.0, "a", "identity", "http")}
    a = got[(0.0, "a", "identity", "grpc")]
    assert (a.requests, a.ok) == (2, 2) and a.p50_ms == pytest.approx(100, rel=0.01)
    b = got[(0.0, "b", "identity", "grpc")]
    assert (b.requests, b.ok, b.wrong, b.errors) == (2, 0, 1, 1) and b.max_ms == pytest.approx(100)
    t = got[(0.0, "b", "timeout", "grpc")]
    assert (t.requests, t.expected_errors, t.ok, t.p50_ms, t.histogram) == (1, 1, 0, 0.0, b"")
    http = got[(0.0, "a", "identity", "http")]
    assert (http.requests, http.max_ms) == (1, pytest.approx(300))


def test_statuses_counted_and_only_answered_latencies_kept() -> None:
    folder = WindowFolder(ORIGIN, window_s=10.0)
    statuses = [STATUS_OK] * 5 + [STATUS_ERROR] * 4 + [STATUS_WRONG] * 3 + [STATUS_EXPECTED_ERROR] * 2 \
        + [STATUS_MISSING_ERROR]
    # Errors are fast (1 ms), answers slow (10 ms, 20 ms for wrong ones): no error may show in latency.
    latency = {STATUS_OK: 10 * MS, STATUS_WRONG: 20 * MS}
    folder.add(_batch(("m",), ("s",), [(ORIGIN + S, latency.get(st, MS), 0, 0, st) for st in statuses]))
    [w] = folder.close_all()
    assert (w.requests, w.ok, w.errors, w.wrong, w.expected_errors, w.missing_errors) == (15, 5, 4, 3, 2, 1)
    assert w.throughput == pytest.approx(1.5)
    assert w.mean_ms == pytest.approx((5 * 10 + 3 * 20) / 8)
    assert w.p50_ms == pytest.approx(10, rel=0.01) and w.p99_ms == pytest.approx(20, rel=0.01)
    assert w.max_ms == pytest.approx(20)
    assert LatencyHistogram.from_bytes(w.histogram).count == 8


def test_close_until_respects_lateness_and_sorts() -> None:
    folder = WindowFolder(ORIGIN, window_s=1.0, lateness_s=2.0)
    folder.add(_batch(("b", "a"), ("s",), [(ORIGIN + S // 2, MS, 0, 0, STATUS_OK),
                                            (ORIGIN + S // 2, MS, 1, 0, STATUS_OK),
                                            (ORIGIN + 3 * S // 2, MS, 1, 0, STATUS_OK)]))
    assert folder.close_until(ORIGIN + 3 * S - 1) == []  # window 0 ends at 1 s, + 2 s lateness
    closed = folder.close_until(ORIGIN + 3 * S)
    assert [(w.start_s, w.model) for w in closed] == [(0.0, "a"), (0.0, "b")]
    assert folder.open_windows == 1
    assert [(w.start_s, w.model) for w in folder.close_until(ORIGIN + 10 * S)] == [(1.0, "a")]
    assert folder.close_until(ORIGIN + 20 * S) == [] and folder.close_all() == []


def test_empty_windows_are_not_emitted() -> None:
    folder = WindowFolder(ORIGIN, window_s=1.0, lateness_s=0.0)
    folder.add(_batch(("a",), ("s", "idle"), [(ORIGIN + S // 2, MS, 0, 0, STATUS_OK),
                                               (ORIGIN + 7 * S + S // 2, MS, 0, 0, STATUS_OK)]))
    rows = folder.close_until(ORIGIN + 100 * S)
    assert [(w.start_s, w.scenario) for w in rows] == [(0.0, "s"), (7.0, "s")]  # no 1..6, no "idle"


def test_late_records_join_the_oldest_open_window_of_their_series_and_are_counted() -> None:
    folder = WindowFolder(ORIGIN, window_s=1.0, lateness_s=0.0)
    folder.add(_batch(("a", "b"), ("s",), [(ORIGIN + 4 * S, MS, 0, 0, STATUS_OK),
                                            (ORIGIN + 5 * S, MS, 0, 0, STATUS_OK)]))
    folder.close_until(ORIGIN + 2 * S)  # windows 0 and 1 closed (none held anything)
    folder.add(_batch(("a", "b"), ("s",), [
        (ORIGIN + S // 10, 300 * MS, 0, 0, STATUS_OK),  # for window 0, a/s: to a/s's oldest open, 4
        (ORIGIN + S // 10, 300 * MS, 1, 0, STATUS_ERROR),  # for window 0, b/s: none open, so window 2
        (ORIGIN + 3 * S, MS, 1, 0, STATUS_OK),  # on time
    ]))
    assert folder.late_records == 2
    rows = folder.close_all()
    assert [(w.start_s, w.model, w.requests) for w in rows] == \
        [(2.0, "b", 1), (3.0, "b", 1), (4.0, "a", 2), (5.0, "a", 1)]
    assert _by_key(rows)[(4.0, "a", "s", "grpc")].max_ms == pytest.approx(300)
    # After close_all everything so far is closed: a straggler still lands somewhere, counted.
    folder.add(_batch(("a",), ("s",), [(ORIGIN + 5 * S, MS, 0, 0, STATUS_OK)]))
    assert folder.late_records == 3
    assert [(w.start_s, w.requests) for w in folder.close_all()] == [(6.0, 1)]


def test_a_bad_batch_raises_and_changes_nothing() -> None:
    folder = WindowFolder(ORIGIN, window_s=1.0)
    folder.add(_batch(("a",), ("s",), [(ORIGIN, MS, 0, 0, STATUS_OK)]))
    with pytest.raises(ValueError, match="name tables"):
        folder.add(_batch(("a",), ("s",), [(ORIGIN, MS, 0, 0, STATUS_OK), (ORIGIN, MS, 1, 0, STATUS_OK)]))
    with pytest.raises(ValueError, match="status"):
        folder.add(_batch(("a",), ("s",), [(ORIGIN, MS, 0, 0, 7)]))
    [w] = folder.close_all()
    assert w.requests == 1


def test_folding_matches_a_per_record_reference() -> None:
    """Many windows, series, senders and statuses at once against a plain Python fold."""
    rng = np.random.default_rng(11)
    folder = WindowFolder(ORIGIN, window_s=0.5, lateness_s=0.25)
    tables = [(("m0", "m1", "m2"), ("s0", "s1")), (("m2", "m0"), ("s1", "s0", "s2"))]
    reference: dict[tuple, list] = collections.defaultdict(list)
    out: list[WindowStats] = []
    clock = ORIGIN
    for i in range(40):
        models, scenarios = tables[i % 2]
        protocol = ("grpc", "http")[i % 3 == 0]
        n = 300
        start = clock + rng.integers(0, S // 2, n)
        latency = rng.lognormal(np.log(20 * MS), 1.0, n).astype(np.int64)
        model = rng.integers(0, len(models), n)
        scenario = rng.integers(0, len(scenarios), n)
        status = rng.choice(5, n, p=[0.8, 0.05, 0.05, 0.05, 0.05])
        folder.add(_batch(models, scenarios, list(zip(start.tolist(), latency.tolist(), model.tolist(),
                                                        scenario.tolist(), status.tolist())), protocol))
        for s, lat, m, sc, st in zip(start.tolist(), latency.tolist(), model.tolist(), scenario.tolist(),
                                     status.tolist()):
            reference[((s + lat - ORIGIN) // (S // 2) * 0.5, models[m], scenarios[sc], protocol)].append((lat, st))
        clock += S // 4
        out += folder.close_until(clock - 2 * S)  # far behind: nothing is late
    out += folder.close_all()
    assert folder.late_records == 0
    assert out == sorted(out, key=lambda w: (w.start_s, w.model, w.scenario, w.protocol))
    got = _by_key(out)
    assert set(got) == set(reference)
    for key, records in reference.items():
        w = got[key]
        statuses = collections.Counter(st for _, st in records)
        assert (w.requests, w.ok, w.errors, w.wrong, w.expected_errors, w.missing_errors) == \
            (len(records), *(statuses[k] for k in range(5))), key
        answered = np.array([lat for lat, st in records if st in (STATUS_OK, STATUS_WRONG)], dtype=np.int64)
        expected = LatencyHistogram()
        expected.add(answered)
        assert LatencyHistogram.from_bytes(w.histogram) == expected, key
        assert w.p90_ms == pytest.approx(expected.percentile(90) / 1e6, rel=1e-12)
    whole = LatencyHistogram()
    whole.add(np.array([lat for recs in reference.values() for lat, st in recs if st in (STATUS_OK, STATUS_WRONG)]))
    assert merge_windows(out) == whole


def test_memory_stays_flat_over_many_windows() -> None:
    folder = WindowFolder(ORIGIN, window_s=1.0, lateness_s=1.0)
    batches = [_batch(("a", "b"), ("s", "t"), [(0, MS, i % 2, i // 2 % 2, STATUS_OK) for i in range(64)],
                      protocol) for protocol in ("grpc", "http")]

    def run(seconds: range) -> None:
        for second in seconds:
            for batch in batches:  # the same records, shifted into this second
                c = dict(batch.columns, start_ns=batch.columns["start_ns"] + ORIGIN + second * S)
                folder.add(RecordBatch(batch.protocol, batch.models, batch.scenarios, c))
            folder.close_until(ORIGIN + second * S)

    run(range(20))
    tracemalloc.start()
    try:
        run(range(20, 40))
        held = tracemalloc.get_traced_memory()[0]
        run(range(40, 400))
        assert tracemalloc.get_traced_memory()[0] - held < 16_384
    finally:
        tracemalloc.stop()
    assert folder.open_windows <= 3 * 8
