"""The reference suite's summary table: one row per scenario, then TOTAL, with the duration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScenarioTotals:
    scenario: str
    plans: int
    failed: int
    requests: int


DESCRIPTIONS = {
    "sequence_valid": "one complete sequence, START ... END, every running sum checked",
    "sequence_valid_valid": "two complete sequences back to back on one correlation id",
    "sequence_valid_no_end": "a complete sequence, then one on the same id that never ends",
    "sequence_no_end": "START and no END: the server must time the sequence out",
    "sequence_no_start": "a first request without START must get the server's START-flag error",
    "timeout": "a large input to a delayed model under a short client deadline: Deadline Exceeded",
    "crashing_client": "a client killed in the middle of its requests; the server must serve on",
    "steady_load": "closed loop steered to keep server queue time inside its band",
    "identity": "stateless requests, answers equal to the inputs",
    "large_tensor": "a large input through an identity model, answer checked",
    "streaming": "a decoupled model's responses, every one checked, count and order",
}

HEADER = ("Test Case", "Number of Failures", "Test Count", "Request Count", "Test Case Description")


def hhmmss(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def render_table(totals: list[ScenarioTotals], duration_s: float) -> str:
    rows = [(t.scenario, str(t.failed), str(t.plans), str(t.requests), DESCRIPTIONS.get(t.scenario, ""))
            for t in totals]
    rows.append(("TOTAL", str(sum(t.failed for t in totals)), str(sum(t.plans for t in totals)),
                 str(sum(t.requests for t in totals)), ""))
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    line = lambda r: " | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([f"Test Duration: {hhmmss(duration_s)} (hh:mm:ss)", line(HEADER), rule,
                      *[line(r) for r in rows[:-1]], rule, line(rows[-1])]) + "\n"
