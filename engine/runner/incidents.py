"""A run's incidents: a worker that died, a server restarted, a stop asked for. Each is kept for
the outcome, said at once, and recorded in the store through the aggregator (as are the other
events only the coordinator knows: the load stopping, a worker gone, where a worker runs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from workers.sender import TelemetrySender
from workers.telemetry import RecordBuffer

from ..aggregator.service import INCIDENT
from ..report.stress_report import hhmmss


@dataclass(frozen=True)
class Incident:
    at_s: float  # seconds since the load started
    what: str


class IncidentLog:
    def __init__(self, say: Callable[[str], None], elapsed: Callable[[], float]) -> None:
        self.items: list[Incident] = []
        self._say = say
        self._elapsed = elapsed
        self._sender: TelemetrySender | None = None

    def connect(self, endpoint: str) -> None:
        """From now on, incidents and events go to the aggregator at `endpoint` too."""
        self._sender = TelemetrySender(endpoint, "coordinator", RecordBuffer((), (), ""))

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None

    def add(self, what: str) -> None:
        at = self._elapsed()
        self.items.append(Incident(at, what))
        self._say(f"[{hhmmss(at)}] incident: {what}")
        self.tell(INCIDENT, what)

    def tell(self, what: str, text: str) -> None:
        """An event of the run for the store (before the aggregator runs: nowhere)."""
        if self._sender is not None:
            # Every one with its text: the sender's per-kind text limit (meant for a flood of
            # request errors) would send the fourth incident of a run as a bare count.
            self._sender.event(what, "", "", text, always_text=True)

    def placement(self, worker: str, text: str) -> None:
        """Where a worker runs and why (Ray): one event per worker, all kept."""
        if self._sender is not None:
            self._sender.event("placement", worker, "", text)
