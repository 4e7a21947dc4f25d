"""What a detector says: which detector, about what, since when, how big, how sure, and the
numbers behind it (the evidence echoes the thresholds that applied)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Verdict:
    detector: str  # "leak", "drift", ...
    kind: str  # "GROWTH", "LEAK", "PLATEAU", "DRIFT", ...
    subject: str  # what it is about: a process, "model/stage", ...
    since_s: float  # run time (seconds) from which the evidence starts
    at_s: float  # run time of the evaluation that raised it
    size: float  # effect size in `unit`
    unit: str  # "MiB/h", "%", ...
    low: float  # confidence bounds of `size`
    high: float
    evidence: dict[str, float] = field(default_factory=dict)
    samples: tuple[str, ...] = ()  # first texts behind it (error messages), verbatim
    # Names one fault across evaluations ("stall:m"): later evidence of the same fault updates the
    # verdict it raised instead of raising a second one. "" = each verdict stands alone.
    fault: str = ""

    def describe(self) -> str:
        bounds = f" [{self.low:.3g}, {self.high:.3g}]" if (self.low, self.high) != (self.size, self.size) else ""
        text = f"{self.kind} {self.subject}: {self.size:.3g} {self.unit}{bounds}"
        if "bytes_per_queued_request" in self.evidence and self.kind == "BACKLOG":
            text += f" ({self.evidence['bytes_per_queued_request']:,.0f} bytes per queued request)"
        elif "bytes_per_request" in self.evidence:  # a memory verdict of a process that serves requests
            text += f" ({self.evidence['bytes_per_request']:,.0f} bytes/request)"
        if "added_queue_ms" in self.evidence:  # a drift, split over where its added time went
            e = self.evidence
            text += (f" (added per request: server queue {e['added_queue_ms']:+.3g} ms, server compute "
                     f"{e['added_compute_ms']:+.3g} ms, outside the server {e['added_outside_ms']:+.3g} ms)")
        text += f" since {_clock(self.since_s)}"
        if "stall_verdict_id" in self.evidence:
            text += f" (follows the STALL of verdict #{self.evidence['stall_verdict_id']:.0f})"
        return text + (f" (first: {self.samples[0][:200]})" if self.samples else "")


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
