"""A worker's end of the telemetry pipe: numbered messages over a ZeroMQ PUSH socket.

The worker must never block on a slow aggregator (that would turn an aggregator hiccup into a
fake server stall), and must never lose a record silently. So sends are non-blocking; a message
the socket cannot take now waits in a bounded backlog that is retried on the next send; what
overflows the backlog is counted as dropped and reported in every heartbeat.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Any

import zmq

from .telemetry import (
    KIND_BATCH,
    KIND_EVENT,
    KIND_HEARTBEAT,
    Event,
    Heartbeat,
    RecordBuffer,
    pack,
)

# A batch leaves when full, or 250 ms after the last one left. Each message costs the aggregator
# about the same to fold whatever its size (unpack, decode, ~20 numpy calls: ~0.4 ms in situ with
# cold caches), so at a modest rate the interval sets its CPU: one worker at 600 answers/s cost it
# 6 ms a second with 100 ms, 4 with 250. Nothing reads records sooner: windows close 2 s after
# their end, live figures move once a second.
FLUSH_INTERVAL_NS = 250_000_000
BACKLOG_LIMIT = 10_000  # messages held while the aggregator is not reading
EVENT_TEXTS = 5  # events per (what, model, scenario) sent with their text; the rest are counted



@dataclass(frozen=True)
class ClientKeys:
    """What a sender needs to reach an aggregator beyond this host: the aggregator's public key and
    the run's client keypair (z85 bytes)."""

    server_public: bytes
    public: bytes
    secret: bytes

    def __repr__(self) -> str:  # a spec printed in a log must not show the secret
        return f"ClientKeys(server_public={self.server_public!r}, public={self.public!r}, secret=...)"


class TelemetrySender:
    def __init__(self, endpoint: str, sender: str, buffer: RecordBuffer, *, context: zmq.Context | None = None,
                 sndhwm: int = 1000, keys: ClientKeys | None = None) -> None:
        """`keys`: the run's CURVE client keys (made by engine.cluster.keys) when the endpoint
        leaves the host; None on ipc and loopback."""
        self.sender = sender
        self.buffer = buffer
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, sndhwm)
        self._socket.setsockopt(zmq.LINGER, 2000)  # on close, up to 2 s to hand over what is queued
        if keys is not None:  # CURVE client: must be set before connect
            self._socket.curve_serverkey = keys.server_public
            self._socket.curve_publickey = keys.public
            self._socket.curve_secretkey = keys.secret
        self._socket.connect(endpoint)
        self._seq = 0
        self._backlog: collections.deque[bytes] = collections.deque()
        self._last_flush_ns = time.monotonic_ns()
        self.records_sent = 0
        self.records_dropped = 0
        self.messages_dropped = 0
        self._event_texts: dict[tuple[str, str, str], int] = {}
        self._event_counts: dict[tuple[str, str, str], int] = {}

    # -- hot path ---------------------------------------------------------------------------
    def record(self, start_ns: int, latency_ns: int, model: int, scenario: int, status: int,
               sequence_id: int = 0, step: int = -1) -> None:
        if self.buffer.add(start_ns, latency_ns, model, scenario, status, sequence_id, step):
            self.flush()

    def maybe_flush(self, now_ns: int) -> None:
        """Call from the worker's loop: sends a partial batch once FLUSH_INTERVAL_NS has passed."""
        if self.buffer.count and now_ns - self._last_flush_ns >= FLUSH_INTERVAL_NS:
            self.flush()

    # -- messages ---------------------------------------------------------------------------
    def flush(self) -> None:
        self._last_flush_ns = time.monotonic_ns()
        if not self.buffer.count:
            return
        count = self.buffer.count
        if self._send(KIND_BATCH, self.buffer.take_body()):
            self.records_sent += count
        else:
            self.records_dropped += count

    def heartbeat(self, heartbeat: Heartbeat) -> None:
        self._send(KIND_HEARTBEAT, heartbeat.to_body())

    def event(self, what: str, model: str, scenario: str, text: str, count: int = 1, *,
              always_text: bool = False) -> None:
        """The first EVENT_TEXTS events of a (what, model, scenario) go out with their text; later
        ones are counted and leave together with the next heartbeat (`flush_events`), unless
        `always_text` (the coordinator's incidents: few, and each one says something new)."""
        key = (what, model, scenario)
        sent = self._event_texts.get(key, 0)
        if sent < EVENT_TEXTS or always_text:
            self._event_texts[key] = sent + 1
            self._send(KIND_EVENT, Event(what, model, scenario, text, count, time.monotonic_ns()).to_body())
        else:
            self._event_counts[key] = self._event_counts.get(key, 0) + count

    def flush_events(self) -> None:
        for (what, model, scenario), count in self._event_counts.items():
            self._send(KIND_EVENT, Event(what, model, scenario, "", count, time.monotonic_ns()).to_body())
        self._event_counts.clear()

    def send(self, kind: str, body: dict[str, Any]) -> bool:
        return self._send(kind, body)

    def _send(self, kind: str, body: dict[str, Any]) -> bool:
        """Queue one numbered message; False when it had to be dropped (counted)."""
        data = pack(kind, self.sender, self._seq, body)
        self._seq += 1
        self._drain_backlog()
        if not self._backlog:
            try:
                self._socket.send(data, zmq.NOBLOCK)
                return True
            except zmq.Again:
                pass
        if len(self._backlog) >= BACKLOG_LIMIT:
            self.messages_dropped += 1
            return False
        self._backlog.append(data)
        return True

    def _drain_backlog(self) -> None:
        while self._backlog:
            try:
                self._socket.send(self._backlog[0], zmq.NOBLOCK)
            except zmq.Again:
                return
            self._backlog.popleft()

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what is buffered and hand the backlog to the socket, waiting up to `timeout_s`."""
        self.flush()
        self.flush_events()
        deadline = time.monotonic() + timeout_s
        while self._backlog and time.monotonic() < deadline:
            self._drain_backlog()
            if self._backlog:
                time.sleep(0.01)
        self.messages_dropped += len(self._backlog)
        self._backlog.clear()
        self._socket.close()
