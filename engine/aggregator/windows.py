"""Fold request records into fixed windows per (model, scenario, protocol), a batch at a time.

A record belongs to the window in which its request *completed* (start + latency), so a window
is closed once its end plus a short lateness has passed: every record of it has been sent by then
(workers flush at least every 100 ms). A record that still arrives for a closed window goes to the
oldest open one and is counted as late, never dropped. Only open windows are held: memory stays
flat over a run of any length."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from workers.telemetry import STATUS_NAMES, STATUS_OK, STATUS_WRONG, RecordBatch

from .histogram import BUCKETS, LatencyHistogram, bucket_of
from .window_stats import WindowStats

_STATUSES = len(STATUS_NAMES)


class WindowFolder:
    """Open windows live as rows of preallocated arrays (status counts, histogram buckets, sum
    and max of latency), so a batch is folded with a handful of numpy calls whatever its mix."""

    def __init__(self, origin_ns: int, window_s: float, lateness_s: float = 2.0) -> None:
        self.origin_ns = origin_ns
        self.window_s = window_s
        self._window_ns = int(window_s * 1e9)
        self._lateness_ns = int(lateness_s * 1e9)
        self._rows: dict[tuple[int, int, int, str], int] = {}  # open window -> its row
        self._free: list[int] = []
        self._counts = np.zeros((0, _STATUSES), dtype=np.int64)
        self._buckets = np.zeros((0, BUCKETS), dtype=np.int64)
        self._sum = np.zeros(0, dtype=np.float64)
        self._max = np.zeros(0, dtype=np.int64)
        self._names: dict[str, int] = {}  # model and scenario names -> global ids
        self._name_list: list[str] = []
        self._closed_before = -(1 << 62)  # windows with a smaller index are closed
        self.late_records = 0

    def _ids(self, names: tuple[str, ...]) -> np.ndarray:
        out = np.empty(len(names), dtype=np.int64)
        for i, name in enumerate(names):
            found = self._names.get(name)
            if found is None:
                found = self._names[name] = len(self._name_list)
                self._name_list.append(name)
            out[i] = found
        return out

    def _row(self, slot: tuple[int, int, int, str]) -> int:
        row = self._rows.get(slot)
        if row is None:
            if not self._free:
                old = len(self._sum)
                grow = max(16, old)
                self._counts = np.vstack([self._counts, np.zeros((grow, _STATUSES), np.int64)])
                self._buckets = np.vstack([self._buckets, np.zeros((grow, BUCKETS), np.int64)])
                self._sum = np.concatenate([self._sum, np.zeros(grow)])
                self._max = np.concatenate([self._max, np.zeros(grow, np.int64)])
                self._free = list(range(old + grow - 1, old - 1, -1))
            row = self._rows[slot] = self._free.pop()
        return row

    def add(self, batch: RecordBatch) -> None:
        if len(batch) == 0:
            return
        c = batch.columns
        latency = c["latency_ns"]
        window = (c["start_ns"] + latency - self.origin_ns) // self._window_ns
        late = window < self._closed_before
        if late.any():
            self.late_records += int(late.sum())
            window = np.where(late, self._closed_before, window)
        model = self._ids(batch.models)[c["model"]]
        scenario = self._ids(batch.scenarios)[c["scenario"]]
        # One integer per (window, model, scenario); each distinct one is a row of the arrays.
        key = (window << 32) | (model << 16) | scenario
        unique, inverse = np.unique(key, return_inverse=True)
        rows = np.array([self._row((k >> 32, (k >> 16) & 0xFFFF, k & 0xFFFF, batch.protocol))
                         for k in unique.tolist()], dtype=np.int64)[inverse]
        status = c["status"]
        np.add.at(self._counts, (rows, status), 1)
        answered = (status == STATUS_OK) | (status == STATUS_WRONG)
        rows, latency = rows[answered], latency[answered]
        if len(rows):
            np.add.at(self._buckets, (rows, bucket_of(latency)), 1)
            np.add.at(self._sum, rows, latency)
            np.maximum.at(self._max, rows, latency)

    def close_until(self, now_ns: int) -> list[WindowStats]:
        """Close (and return) every window whose end + lateness has passed."""
        limit = (now_ns - self._lateness_ns - self.origin_ns) // self._window_ns
        self._closed_before = max(self._closed_before, limit)
        return self._close([slot for slot in self._rows if slot[0] < self._closed_before])

    def close_all(self) -> list[WindowStats]:
        if self._rows:
            self._closed_before = max(self._closed_before, max(slot[0] for slot in self._rows) + 1)
        return self._close(list(self._rows))

    def _close(self, slots: list[tuple[int, int, int, str]]) -> list[WindowStats]:
        out = []
        for slot in sorted(slots, key=lambda s: (s[0], self._name_list[s[1]], self._name_list[s[2]], s[3])):
            row = self._rows.pop(slot)
            out.append(self._stats(slot, row))
            self._counts[row] = 0
            self._buckets[row] = 0
            self._sum[row] = 0.0
            self._max[row] = 0
            self._free.append(row)
        return out

    def _stats(self, slot: tuple[int, int, int, str], row: int) -> WindowStats:
        index, model, scenario, protocol = slot
        counts = self._counts[row]
        ok, errors, wrong, expected, missing = (int(x) for x in counts[:5])
        h = LatencyHistogram()
        h.counts[:] = self._buckets[row]
        h.count, h.sum_ns, h.max_ns = ok + wrong, float(self._sum[row]), int(self._max[row])
        requests = int(counts.sum())
        ms = 1e-6
        return WindowStats(
            start_s=index * self.window_s, length_s=self.window_s, model=self._name_list[model],
            scenario=self._name_list[scenario], protocol=protocol, requests=requests, ok=ok, errors=errors,
            wrong=wrong, expected_errors=expected, missing_errors=missing, throughput=requests / self.window_s,
            mean_ms=h.mean_ns * ms, p50_ms=h.percentile(50) * ms, p90_ms=h.percentile(90) * ms,
            p95_ms=h.percentile(95) * ms, p99_ms=h.percentile(99) * ms, max_ms=h.max_ns * ms,
            histogram=h.to_bytes() if h.count else b"",
        )


def merge_windows(rows: Iterable[WindowStats]) -> LatencyHistogram:
    """Whole-run (or any span's) latency histogram from the windows' own."""
    merged = LatencyHistogram()
    for row in rows:
        if row.histogram:
            merged.merge(LatencyHistogram.from_bytes(row.histogram))
    return merged
