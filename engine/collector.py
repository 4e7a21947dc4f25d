"""Reads the workers' telemetry and keeps the run's totals: per scenario and status, per worker,
with gaps in each sender's numbering counted (a lost message is never silent)."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

import numpy as np
import zmq

from workers.telemetry import (
    KIND_BATCH,
    KIND_EVENT,
    KIND_HEARTBEAT,
    STATUS_NAMES,
    Message,
    decode_batch,
    unpack,
)

SAMPLE_TEXTS = 5  # first texts kept verbatim per (what, scenario); later ones only counted


@dataclass
class SenderState:
    next_seq: int = 0
    lost: int = 0
    last_heartbeat: float = 0.0  # monotonic seconds
    plans: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # cumulative, from heartbeats
    records_dropped: int = 0
    in_flight: int = 0


@dataclass(frozen=True)
class ScenarioTotals:
    scenario: str
    plans: int
    failed: int
    requests: int


class Collector:
    def __init__(self, endpoint: str, context: zmq.Context | None = None) -> None:
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.PULL)
        self._socket.setsockopt(zmq.RCVHWM, 100_000)
        self._socket.bind(endpoint)
        self.endpoint = endpoint
        self.senders: dict[str, SenderState] = collections.defaultdict(SenderState)
        # (scenario, status name) -> requests recorded
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.models: collections.Counter[tuple[str, str]] = collections.Counter()  # (model, status)
        self.events: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
        self.event_counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.latency_ns_sum = 0
        self.messages = 0

    def poll(self, timeout_s: float) -> int:
        """Handle what arrives within `timeout_s` (at least one wait); returns messages handled."""
        handled = 0
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            if not self._socket.poll(int(remaining * 1000)):
                return handled
            while True:
                try:
                    data = self._socket.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self.handle(unpack(data))
                handled += 1
            if time.monotonic() >= deadline:
                return handled

    def handle(self, message: Message) -> None:
        self.messages += 1
        sender = self.senders[message.sender]
        if message.seq != sender.next_seq:
            sender.lost += max(0, message.seq - sender.next_seq)
        sender.next_seq = message.seq + 1
        if message.kind == KIND_BATCH:
            self._batch(message)
        elif message.kind == KIND_HEARTBEAT:
            body = message.body
            sender.last_heartbeat = time.monotonic()
            sender.plans = {k: tuple(v) for k, v in body.get("plans", {}).items()}  # type: ignore[misc]
            sender.records_dropped = body.get("records_dropped", 0)
            sender.in_flight = body.get("in_flight", 0)
        elif message.kind == KIND_EVENT:
            key = (message.body.get("what", ""), message.body.get("scenario", ""))
            self.event_counts[key] += message.body.get("count", 1)
            text = message.body.get("text", "")
            if text and len(self.events[key]) < SAMPLE_TEXTS:
                self.events[key].append(text)

    def _batch(self, message: Message) -> None:
        batch = decode_batch(message)
        columns = batch.columns
        # Count (scenario, status) and (model, status) pairs with numpy: no per-record Python.
        for codes, names, counter in ((columns["scenario"], batch.scenarios, self.requests),
                                      (columns["model"], batch.models, self.models)):
            pairs = codes.astype(np.int64) * 256 + columns["status"]
            values, counts = np.unique(pairs, return_counts=True)
            for value, count in zip(values.tolist(), counts.tolist()):
                counter[(names[value // 256], STATUS_NAMES[value % 256])] += count
        self.latency_ns_sum += int(columns["latency_ns"].sum())

    def scenario_totals(self) -> list[ScenarioTotals]:
        merged: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
        for state in self.senders.values():
            for scenario, (plans, failed, requests) in state.plans.items():
                row = merged[scenario]
                row[0] += plans
                row[1] += failed
                row[2] += requests
        return [ScenarioTotals(name, *row) for name, row in sorted(merged.items())]

    @property
    def lost_messages(self) -> int:
        return sum(s.lost for s in self.senders.values())

    def close(self) -> None:
        self._socket.close(0)
