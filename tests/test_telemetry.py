"""The telemetry wire format and sender over real ZeroMQ sockets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zmq

from workers.sender import FLUSH_INTERVAL_NS, TelemetrySender
from workers.telemetry import (
    KIND_BATCH,
    KIND_EVENT,
    KIND_HEARTBEAT,
    STATUS_OK,
    STATUS_WRONG,
    Heartbeat,
    RecordBuffer,
    decode_batch,
    pack,
    unpack,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture()
def pull(tmp_path: Path):
    context = zmq.Context()
    socket = context.socket(zmq.PULL)
    endpoint = f"ipc://{tmp_path}/telemetry.sock"
    socket.bind(endpoint)
    yield endpoint, socket, context
    socket.close(0)
    context.term()


def _receive(socket: zmq.Socket, n: int) -> list:
    out = []
    for _ in range(n):
        assert socket.poll(5000), f"only {len(out)} of {n} messages arrived"
        out.append(unpack(socket.recv()))
    return out


def test_records_arrive_columnar_and_exact(pull) -> None:
    endpoint, socket, context = pull
    buffer = RecordBuffer(("identity_fp32", "sequence_int32"), ("identity", "sequence_valid"), "grpc", capacity=100)
    sender = TelemetrySender(endpoint, "worker-0", buffer, context=context)
    rng = np.random.default_rng(1)
    expected = []
    for i in range(250):
        row = (int(rng.integers(1, 1 << 50)), int(rng.integers(1, 10**9)), i % 2, i % 2,
               STATUS_WRONG if i % 7 == 0 else STATUS_OK, i * 3, i % 16)
        expected.append(row)
        sender.record(*row)
    sender.close()
    messages = _receive(socket, 3)  # 100 + 100 when full, 50 on close
    assert [m.seq for m in messages] == [0, 1, 2]
    assert all(m.kind == KIND_BATCH and m.sender == "worker-0" for m in messages)
    batches = [decode_batch(m) for m in messages]
    assert [len(b) for b in batches] == [100, 100, 50]
    got = np.concatenate([np.column_stack([b.columns[c].astype(np.int64) for c in
                          ("start_ns", "latency_ns", "model", "scenario", "status", "sequence_id", "step")])
                          for b in batches])
    assert got.tolist() == [list(r) for r in expected]
    assert batches[0].models == ("identity_fp32", "sequence_int32") and batches[0].protocol == "grpc"
    assert sender.records_sent == 250 and sender.records_dropped == 0


def test_partial_batch_leaves_after_the_flush_interval(pull) -> None:
    endpoint, socket, context = pull
    sender = TelemetrySender(endpoint, "w", RecordBuffer(("m",), ("s",), "http"), context=context)
    sender.record(1, 2, 0, 0, STATUS_OK)
    sender.maybe_flush(sender._last_flush_ns + 1)  # too early: nothing leaves
    assert not socket.poll(100)
    sender.maybe_flush(sender._last_flush_ns + FLUSH_INTERVAL_NS)
    assert len(decode_batch(_receive(socket, 1)[0])) == 1
    sender.close()


def test_heartbeat_and_event_bodies(pull) -> None:
    endpoint, socket, context = pull
    sender = TelemetrySender(endpoint, "w", RecordBuffer(("m",), ("s",), "grpc"), context=context)
    sender.heartbeat(Heartbeat(time_ns=5, in_flight=2, oldest_in_flight_ns=3, open_sequences={77: (0, 4, 9)},
                               records_sent=10, records_dropped=0))
    sender.event("validation", "m", "s", "OUTPUT0 = 3, expected 2")
    sender.close()
    beat, event = _receive(socket, 2)
    assert beat.kind == KIND_HEARTBEAT and beat.body["open_sequences"] == {"77": [0, 4, 9]}
    assert event.kind == KIND_EVENT and event.body["text"] == "OUTPUT0 = 3, expected 2"
    assert (beat.seq, event.seq) == (0, 1)


def test_slow_aggregator_neither_blocks_nor_loses(tmp_path: Path) -> None:
    """With no reader bound, sends return at once; what waits is delivered, in order, once one binds."""
    context = zmq.Context()
    endpoint = f"ipc://{tmp_path}/late.sock"
    sender = TelemetrySender(endpoint, "w", RecordBuffer(("m",), ("s",), "grpc", capacity=1), context=context,
                             sndhwm=5)
    for i in range(60):
        sender.record(i, i, 0, 0, STATUS_OK)
    assert sender.records_dropped == 0
    socket = context.socket(zmq.PULL)
    socket.bind(endpoint)
    sender.close()
    got = _receive(socket, 60)
    assert [m.seq for m in got] == list(range(60))
    assert [int(decode_batch(m).columns["start_ns"][0]) for m in got] == list(range(60))
    socket.close(0)
    context.term()


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown telemetry message kind"):
        unpack(pack("gossip", "w", 0, {}))


def test_events_beyond_the_first_texts_are_counted_not_repeated(pull) -> None:
    endpoint, socket, context = pull
    sender = TelemetrySender(endpoint, "w", RecordBuffer(("m",), ("s",), "grpc"), context=context)
    for i in range(50):
        sender.event("scenario_failed", "m", "s", f"failure {i}")
    sender.flush_events()
    sender.close()
    events = _receive(socket, 6)
    assert [e.body["text"] for e in events[:5]] == [f"failure {i}" for i in range(5)]
    assert events[5].body["text"] == "" and events[5].body["count"] == 45
    assert not socket.poll(200)


def test_events_sent_always_with_text_keep_every_text(pull) -> None:
    """The coordinator's incidents: a run's fourth, fifth and sixth incident each say what happened
    (with the per-kind limit they arrived as a bare count, and the report printed empty incidents)."""
    endpoint, socket, context = pull
    sender = TelemetrySender(endpoint, "coordinator", RecordBuffer((), (), ""), context=context)
    for i in range(8):
        sender.event("incident", "", "", f"incident {i}", always_text=True)
    sender.flush_events()
    sender.close()
    events = _receive(socket, 8)
    assert [e.body["text"] for e in events] == [f"incident {i}" for i in range(8)]
    assert not socket.poll(200)  # no count-only message follows
