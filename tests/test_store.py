"""The run store keeps what was committed, whatever happens to its writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.detectors.verdict import Verdict
from engine.live_status import LiveStatus
from engine.store import RunStore
from engine.window_stats import WindowStats


def _window(start: float, model: str = "m") -> WindowStats:
    return WindowStats(start, 1.0, model, "identity", "grpc", 10, 9, 1, 0, 0, 0, 10.0, 1.0, 1.0, 2.0, 2.0, 3.0, 4.0,
                       b"\x01\x02")


def test_every_table_round_trips(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path / "run.sqlite", "r1", '{"a": 1}', "2026-11-25T00:00:00+00:00")
    store.add_windows([_window(0.0), _window(1.0, "n")])
    store.add_resources(0.5, {"proc/server/rss_anon": 1e6, "shm/files": 2})
    store.add_resources(1.5, {"proc/server/rss_anon": 2e6})
    store.add_event(0.7, "worker-0", "scenario_failed", "m", "identity", 1, "boom")
    growth = store.add_verdict(Verdict("leak", "GROWTH", "stub/m_0_0", 1.0, 2.0, 100.0, "MiB/h", 90.0, 110.0,
                                       {"gate_mib_h": 64.0}, ("first",)))
    store.set_verdict_state(growth, "withdrawn")
    store.add_incident(3.0, "worker 1 exited")
    store.set_status(LiveStatus(requests=10, heartbeat_age_s={"worker-0": 0.5}))
    store.set_totals([("identity", 3, 1, 10)])
    store.commit()
    store.close()

    reader = RunStore.open(tmp_path / "run.sqlite")
    try:
        assert reader.run_info().config == {"a": 1} and reader.run_info().run_id == "r1"
        assert reader.windows() == [_window(0.0), _window(1.0, "n")]
        assert reader.windows(model="n") == [_window(1.0, "n")]
        assert reader.series_names() == ["proc/server/rss_anon", "shm/files"]
        t, v = reader.series("proc/server/rss_anon")
        assert np.array_equal(t, [0.5, 1.5]) and np.array_equal(v, [1e6, 2e6])
        assert [(e.what, e.text) for e in reader.events()] == [("scenario_failed", "boom")]
        [row] = reader.verdicts()
        assert (row.state == "withdrawn" and row.verdict.samples == ("first",)
                and row.verdict.evidence["gate_mib_h"] == 64)
        assert reader.incidents() == [(3.0, "worker 1 exited")]
        assert reader.status() == LiveStatus(requests=10, heartbeat_age_s={"worker-0": 0.5})
        assert reader.totals() == [("identity", 3, 1, 10)]
    finally:
        reader.close()


def test_readonly_open_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        RunStore.open(tmp_path / "none.sqlite")
    assert list(tmp_path.iterdir()) == []
