"""Fold request records into fixed windows per (model, scenario, protocol, target), a batch at a
time (target: the server's name in a fleet, "" with one server).

A record belongs to the window in which its request *completed* (start + latency), so a window
is closed once its end plus a short lateness has passed: every record of it has been sent by then
(workers flush at least every 250 ms). A record that still arrives for a closed window goes to the
oldest window still open for its (model, scenario, protocol), or to a new one at the first window
not yet closed, and is counted as late: never dropped. Only open windows are held, so memory stays
flat over a run of any length."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from workers.telemetry import (
    STATUS_ERROR,
    STATUS_EXPECTED_ERROR,
    STATUS_MISSING_ERROR,
    STATUS_NAMES,
    STATUS_OK,
    STATUS_WRONG,
    RecordBatch,
)

from ..window_stats import WindowStats
from .histogram import BUCKETS, LatencyHistogram, bucket_of

_STATUSES = len(STATUS_NAMES)
_ANSWERED = np.zeros(256, dtype=bool)  # status code -> has a latency worth keeping
_ANSWERED[[STATUS_OK, STATUS_WRONG]] = True

# An open window is one int64 key, (window index << _SERIES_BITS) | series id, so the open windows
# sort by window first and one searchsorted maps a whole batch to its rows.
_SERIES_BITS = 24
_SERIES_MASK = (1 << _SERIES_BITS) - 1
_WINDOW_LIMIT = 1 << (62 - _SERIES_BITS)  # window indices clipped to +-this: a broken clock must not wrap keys
_TABLES_KEPT = 1024  # distinct sender name tables remembered (each sender usually has one)
_PERCENTILES = (50.0, 90.0, 95.0, 99.0)


class WindowFolder:
    """Open windows live as rows of preallocated arrays (status counts, histogram buckets, sum and
    max of latency), so a batch is folded with a handful of numpy calls whatever its mix of models,
    scenarios and windows. Python work is per new window or per name table, never per record."""

    def __init__(self, origin_ns: int, window_s: float, lateness_s: float = 2.0) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s!r}")
        if not lateness_s >= 0:
            raise ValueError(f"lateness_s must be >= 0, got {lateness_s!r}")
        self.origin_ns = origin_ns
        self.window_s = window_s
        self.lateness_s = lateness_s
        self._window_ns = max(1, round(window_s * 1e9))
        self._lateness_ns = round(lateness_s * 1e9)
        self.late_records = 0  # records that came after their window had closed
        # Series: (model, scenario, protocol) -> a small id; and per sender name table, the series
        # id of every (model code, scenario code) pair, flattened, so a batch maps with one take.
        self._series: list[tuple[str, str, str, str]] = []  # (model, scenario, protocol, target)
        self._series_ids: dict[tuple[str, str, str, str], int] = {}
        self._tables: dict[tuple[str, tuple[str, ...], tuple[str, ...], str], np.ndarray] = {}
        # Open windows: sorted keys, the row of each; rows not in use.
        self._keys = np.zeros(0, dtype=np.int64)
        self._rows = np.zeros(0, dtype=np.int64)
        self._free: list[int] = []
        self._counts = np.zeros((0, _STATUSES), dtype=np.int64)
        self._buckets = np.zeros((0, BUCKETS), dtype=np.int64)
        self._sum = np.zeros(0, dtype=np.int64)
        self._max = np.zeros(0, dtype=np.int64)
        self._closed_before = -_WINDOW_LIMIT  # every window with a smaller index is closed

    @property
    def open_windows(self) -> int:
        return len(self._keys)

    # -- folding ----------------------------------------------------------------------------
    def add(self, batch: RecordBatch) -> None:
        """Fold a batch in. A batch whose codes do not fit its name tables raises ValueError and
        changes nothing."""
        n = len(batch)
        if n == 0:
            return
        c = batch.columns
        latency, status = c["latency_ns"], c["status"]
        series = self._series_of(batch)
        if int(status.max()) >= _STATUSES:
            raise ValueError(f"batch has status code {int(status.max())}; known: 0..{_STATUSES - 1}")
        window = c["start_ns"] + latency
        window -= self.origin_ns
        window //= self._window_ns
        np.clip(window, -_WINDOW_LIMIT, _WINDOW_LIMIT, out=window)
        late = window < self._closed_before
        if late.any():
            self._redirect_late(window, series, late)
        window <<= _SERIES_BITS
        window |= series
        rows = self._rows_of(window)
        # np.add.at on a flat index is numpy's fast unbuffered path; rows are distinct per window.
        np.add.at(self._counts.reshape(-1), rows * _STATUSES + status, 1)
        answered = _ANSWERED[status]
        if not answered.all():
            rows, latency = rows[answered], latency[answered]
        if len(rows):
            np.add.at(self._buckets.reshape(-1), rows * BUCKETS + bucket_of(latency), 1)
            np.add.at(self._sum, rows, latency)
            np.maximum.at(self._max, rows, latency)

    def _series_of(self, batch: RecordBatch) -> np.ndarray:
        """Series id of each record. The codes index the batch's own name tables, which differ
        between senders, so ids come from the names, never from the codes."""
        models, scenarios = batch.models, batch.scenarios
        model, scenario = batch.columns["model"], batch.columns["scenario"]
        if int(model.max()) >= len(models) or int(scenario.max()) >= len(scenarios):
            raise ValueError(f"batch codes beyond its name tables: model {int(model.max())} of {len(models)}, "
                             f"scenario {int(scenario.max())} of {len(scenarios)}")
        names = (batch.protocol, models, scenarios, batch.target)
        table = self._tables.get(names)
        if table is None:
            if len(self._tables) >= _TABLES_KEPT:  # name tables that never repeat: forget, not grow
                self._tables.clear()
            table = self._tables[names] = np.array(
                [self._series_id((m, s, batch.protocol, batch.target)) for m in models for s in scenarios],
                dtype=np.int64)
        return table[model.astype(np.intp) * len(scenarios) + scenario]

    def _series_id(self, name: tuple[str, str, str, str]) -> int:
        found = self._series_ids.get(name)
        if found is None:
            if len(self._series) > _SERIES_MASK:
                raise ValueError(f"more than {_SERIES_MASK + 1} (model, scenario, protocol, target) series")
            found = self._series_ids[name] = len(self._series)
            self._series.append(name)
        return found

    def _redirect_late(self, window: np.ndarray, series: np.ndarray, late: np.ndarray) -> None:
        """Late records go to their series' oldest open window, else the first window not closed."""
        target = np.full(int(late.sum()), self._closed_before, dtype=np.int64)
        self.late_records += len(target)
        if len(self._keys):
            # Keys sort by window first: a stable sort by series keeps each series' windows in
            # order, so the first of each run is that series' oldest open window.
            order = np.argsort(self._keys & _SERIES_MASK, kind="stable")
            by_series = self._keys[order]
            ids = by_series & _SERIES_MASK
            first = np.ones(len(ids), dtype=bool)
            np.not_equal(ids[1:], ids[:-1], out=first[1:])
            ids, oldest = ids[first], by_series[first] >> _SERIES_BITS
            wanted = series[late]
            at = np.minimum(np.searchsorted(ids, wanted), len(ids) - 1)
            found = ids[at] == wanted
            target[found] = oldest[at[found]]
        window[late] = target

    def _rows_of(self, keys: np.ndarray) -> np.ndarray:
        """Row of each record's window, opening the windows not open yet."""
        at = np.searchsorted(self._keys, keys)
        if len(self._keys):
            known = self._keys[np.minimum(at, len(self._keys) - 1)] == keys
            if known.all():
                return self._rows[at]
            keys_new = np.unique(keys[~known])
        else:
            keys_new = np.unique(keys)
        self._open(keys_new)
        return self._rows[np.searchsorted(self._keys, keys)]

    def _open(self, keys: np.ndarray) -> None:
        if len(self._free) < len(keys):
            self._grow(len(keys) - len(self._free))
        rows = np.array([self._free.pop() for _ in range(len(keys))], dtype=np.int64)
        all_keys = np.concatenate([self._keys, keys])
        order = np.argsort(all_keys, kind="stable")
        self._keys = all_keys[order]
        self._rows = np.concatenate([self._rows, rows])[order]

    def _grow(self, at_least: int) -> None:
        old = len(self._sum)
        new = old + max(at_least, old, 16)  # doubling: growth is rare and copies stay cheap

        def grown(a: np.ndarray) -> np.ndarray:
            out = np.zeros((new, *a.shape[1:]), dtype=a.dtype)
            out[:old] = a
            return out

        self._counts, self._buckets = grown(self._counts), grown(self._buckets)
        self._sum, self._max = grown(self._sum), grown(self._max)
        self._free.extend(range(new - 1, old - 1, -1))  # popped from the end: low rows first

    # -- closing ----------------------------------------------------------------------------
    def close_until(self, now_ns: int) -> list[WindowStats]:
        """Close, forget and return every window whose end + lateness is at or before `now_ns`,
        sorted by (start, model, scenario, protocol)."""
        limit = (now_ns - self._lateness_ns - self.origin_ns) // self._window_ns
        self._closed_before = max(self._closed_before, min(limit, _WINDOW_LIMIT))
        return self._close(int(np.searchsorted(self._keys, self._closed_before << _SERIES_BITS)))

    def close_all(self) -> list[WindowStats]:
        """Close every open window (the run's end); records for them after this count as late."""
        if len(self._keys):
            last = int(self._keys[-1] >> _SERIES_BITS)
            self._closed_before = max(self._closed_before, last + 1)
        return self._close(len(self._keys))

    def _close(self, k: int) -> list[WindowStats]:
        """Close the first `k` open windows (the oldest: keys sort by window first)."""
        if k == 0:
            return []
        keys, rows = self._keys[:k], self._rows[:k]
        out = [self._stats(int(key), int(row)) for key, row in zip(keys.tolist(), rows.tolist())]
        out.sort(key=lambda w: (w.start_s, w.model, w.scenario, w.protocol))
        self._counts[rows] = 0
        self._buckets[rows] = 0
        self._sum[rows] = 0
        self._max[rows] = 0
        self._free.extend(rows.tolist())
        self._keys, self._rows = self._keys[k:], self._rows[k:]
        return out

    def _stats(self, key: int, row: int) -> WindowStats:
        model, scenario, protocol, target = self._series[key & _SERIES_MASK]
        index = key >> _SERIES_BITS
        counts = self._counts[row].tolist()
        ok, errors, wrong = counts[STATUS_OK], counts[STATUS_ERROR], counts[STATUS_WRONG]
        expected, missing = counts[STATUS_EXPECTED_ERROR], counts[STATUS_MISSING_ERROR]
        h = LatencyHistogram()
        h.counts[:] = self._buckets[row]
        h.count, h.sum_ns, h.max_ns = ok + wrong, int(self._sum[row]), int(self._max[row])
        p50, p90, p95, p99 = h.percentiles(_PERCENTILES)
        requests = sum(counts)
        ms = 1e-6
        stats = WindowStats(
            start_s=index * self.window_s, length_s=self.window_s, model=model, scenario=scenario,
            protocol=protocol, requests=requests, ok=ok, errors=errors, wrong=wrong, expected_errors=expected,
            missing_errors=missing, throughput=requests / self.window_s, mean_ms=h.mean_ns * ms,
            p50_ms=p50 * ms, p90_ms=p90 * ms, p95_ms=p95 * ms, p99_ms=p99 * ms, max_ms=h.max_ns * ms,
            # No answered request, no histogram: b"" (from_bytes reads it as an empty one).
            histogram=h.to_bytes() if h.count else b"",
        )
        # The target only when there is one: passing it for every window made CPython 3.11 keep more
        # memory (a plateau, freed by gc.collect(); tests/test_windows.py checks flat memory).
        return dataclasses.replace(stats, target=target) if target else stats


def merge_windows(rows: Iterable[WindowStats]) -> LatencyHistogram:
    """Whole-run (or any span's) latency histogram from the windows' own."""
    merged = LatencyHistogram()
    for row in rows:
        if row.histogram:
            merged.merge(LatencyHistogram.from_bytes(row.histogram))
    return merged
