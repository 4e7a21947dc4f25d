"""The values that cross process lines keep their meaning across the wire and across versions:
a heartbeat, an event and a resource sample decode to what was sent; the live figures a store
holds read back typed, also when written by an engine that knew other fields."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from engine.live_status import LiveStatus
from engine.store import RunStore
from workers.telemetry import KIND_HEARTBEAT, Event, Heartbeat, ResourceSample, pack, unpack

pytestmark = pytest.mark.timeout(60)


def test_a_heartbeat_reads_back_as_sent_through_msgpack() -> None:
    beat = Heartbeat(time_ns=5_000_000_000, in_flight=3, oldest_in_flight_ns=4_000_000_000,
                     open_sequences={"17": (1, 4_500_000_000, 6)}, records_sent=900, records_dropped=2,
                     plans={"identity": (10, 1, 40)}, schedule_lateness_ns=7, schedule_skipped=1,
                     oldest_by_model={0: 4_000_000_000}, in_flight_by_model={0: 2, 1: 1},
                     starts_by_model={1: (1, 4_200_000_000)}, models=("identity_fp32", "sequence_int32"),
                     cpu_s=1.5, loop_lag_ns=300, answers=(40, 12, 3))
    message = unpack(pack(KIND_HEARTBEAT, "worker-0", 1, beat.to_body()))
    assert Heartbeat.from_body(message.body) == beat


def test_a_heartbeat_without_per_model_counts_gives_its_total_to_each_model_in_flight() -> None:
    beat = Heartbeat.from_body({"time_ns": 1, "in_flight": 4, "oldest_by_model": {"0": 10, "2": 20}})
    assert beat.in_flight_by_model == {0: 4, 2: 4} and beat.records_sent == 0 and beat.plans == {}
    assert beat.answers == (0, 0, 0)  # an older worker's heartbeat: no answer counts


def test_a_body_that_is_not_a_heartbeat_is_refused() -> None:
    with pytest.raises((TypeError, ValueError)):
        Heartbeat.from_body({"time_ns": "soon"})
    with pytest.raises(TypeError):
        ResourceSample.from_body({"time_ns": 1, "samples": [1.0, 2.0]})


def test_events_and_samples_read_back_as_sent() -> None:
    event = Event("scenario_failed", "identity_fp32", "identity", "boom", 3, 99)
    assert Event.from_body(unpack(pack("event", "worker-1", 0, event.to_body())).body) == event
    sample = ResourceSample(12, {"proc/server/rss_anon": 1e6})
    assert ResourceSample.from_body(unpack(pack("resources", "monitor", 0, sample.to_body())).body) == sample


def test_live_figures_read_back_typed_and_across_versions(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    store = RunStore.create(path, "r1", "{}", "2026-12-06T00:00:00+00:00")
    try:
        assert store.status() is None  # before the first commit
        status = LiveStatus(time_s=12.5, requests=100, verdicts=["LEAK x"], heartbeat_age_s={"worker-0": 0.4},
                            senders={"worker-0": [7, {"identity": [3, 0, 12]}]}, final=True)
        store.set_status(status)
        store.commit()
        assert store.status() == status
    finally:
        store.close()
    # A newer engine's field is left out, a missing one takes its default.
    db = sqlite3.connect(path)
    db.execute("UPDATE status SET figures = ? WHERE id = 1", ('{"requests": 5, "from_the_future": 1}',))
    db.commit()
    db.close()
    reader = RunStore.open(path)
    try:
        assert reader.status() == dataclasses.replace(LiveStatus(), requests=5)
    finally:
        reader.close()
