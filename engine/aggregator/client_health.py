"""When the engine itself is the bottleneck: a worker near a full core, its event loop late, or its
open-loop schedule behind (DETECTION.md: "windows where the engine itself was the bottleneck are
marked and kept out of verdicts").

Latency measured by a saturated load generator includes its own queueing: a drift in those windows
says more about the client than about the server. Each worker's heartbeat carries its CPU time, how
late its event loop woke, and how late its scheduler started plans; a worker over any limit marks
the time between two of its heartbeats as client-bound. The aggregator keeps drift away from
windows that overlap such a span, and records each span's start and end as events, so the report
shades them.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from workers.telemetry import Heartbeat

CPU_SHARE = 0.9  # of one core: a Python worker at this is its own bottleneck
LOOP_LAG_S = 0.1  # its event loop woke this late: everything it timed waited as long
SCHEDULE_LATE_S = 0.1  # open loop: plans started this late
KEEP_S = 6 * 3600.0  # spans older than this are forgotten (drift reads the latest windows only)
BOUND = "client_bound"  # event: a span starts (text: who, why)
FREE = "client_free"  # event: it ends


@dataclass
class _Worker:
    last_s: float | None = None
    cpu_s: float = 0.0
    bound_since: float | None = None


@dataclass
class ClientHealth:
    spans: collections.deque[tuple[float, float]] = field(default_factory=collections.deque)  # closed spans
    workers: dict[str, _Worker] = field(default_factory=dict)
    held_windows: int = 0  # windows kept away from drift

    def beat(self, name: str, at_s: float, heartbeat: Heartbeat) -> tuple[str, str] | None:
        """One heartbeat of worker `name` at run second `at_s`; an event (what, text) when the
        worker becomes client-bound or stops being so."""
        worker = self.workers.setdefault(name, _Worker())
        cpu = heartbeat.cpu_s
        reasons = []
        if worker.last_s is not None and at_s > worker.last_s and cpu:
            share = (cpu - worker.cpu_s) / (at_s - worker.last_s)
            if share >= CPU_SHARE:
                reasons.append(f"{100 * share:.0f} % of a core")
        lag = heartbeat.loop_lag_ns / 1e9
        if lag >= LOOP_LAG_S:
            reasons.append(f"its event loop {1000 * lag:.0f} ms late")
        late = heartbeat.schedule_lateness_ns / 1e9
        if late >= SCHEDULE_LATE_S:
            reasons.append(f"plans started {1000 * late:.0f} ms late")
        since, worker.last_s, worker.cpu_s = worker.last_s, at_s, cpu
        event = None
        if reasons and worker.bound_since is None:
            worker.bound_since = since if since is not None else at_s
            event = (BOUND, f"{name}: " + ", ".join(reasons))
        elif not reasons and worker.bound_since is not None:
            self.spans.append((worker.bound_since, at_s))
            worker.bound_since = None
            event = (FREE, f"{name}: no longer its own bottleneck")
        while self.spans and self.spans[0][1] < at_s - KEEP_S:
            self.spans.popleft()
        return event

    def bound(self, start_s: float, end_s: float) -> bool:
        """Whether any worker was client-bound at some time in [start_s, end_s)."""
        if any(w.bound_since is not None and w.bound_since < end_s for w in self.workers.values()):
            return True
        return any(a < end_s and b > start_s for a, b in self.spans)
