"""Progress while a run goes on, from the aggregator's live figures: elapsed and remaining time,
requests/s, the p99 of the last closed windows and the worst of the last few, failed requests
and verdicts. On a terminal one line is rewritten in place every second; in a log a plain line
every 10 s. A new verdict is always printed on a line of its own, the moment it is seen."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from .stress_report import hhmmss

PLAIN_EVERY_S = 10.0


class LiveView:
    def __init__(self, mode: str = "auto", stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "line" if self.stream.isatty() else "plain"
        self.mode = mode
        self._shown_verdicts = 0
        self._next_plain = PLAIN_EVERY_S
        self._line_open = False

    def update(self, status: dict[str, Any], elapsed_s: float, remaining_s: float) -> None:
        if self.mode == "off":
            return
        verdicts = status.get("verdicts", [])
        for text in verdicts[self._shown_verdicts:]:
            self._end_line()
            self.stream.write(f"[{hhmmss(elapsed_s)}] VERDICT {text}\n")
        self._shown_verdicts = max(self._shown_verdicts, len(verdicts))
        line = (f"[{hhmmss(elapsed_s)}] {status.get('requests', 0)} requests, {status.get('rate', 0.0):.0f}/s, "
                f"p99 {status.get('p99_ms', 0.0):.1f} ms (recent worst "
                f"{status.get('p99_recent_ms', status.get('p99_ms', 0.0)):.1f} ms), {status.get('errors', 0)} failed, "
                f"{status.get('wrong', 0)} wrong, {len(verdicts)} verdicts, {hhmmss(remaining_s)} left")
        if self.mode == "line":
            self.stream.write("\r" + line + "\033[K")
            self._line_open = True
        elif elapsed_s >= self._next_plain:
            self._next_plain = elapsed_s + PLAIN_EVERY_S
            self.stream.write(line + "\n")
        self.stream.flush()

    def say(self, text: str) -> None:
        """A line of its own (an incident), without breaking the progress line."""
        self._end_line()
        self.stream.write(text + "\n")
        self.stream.flush()

    def _end_line(self) -> None:
        if self._line_open:
            self.stream.write("\n")
            self._line_open = False

    def close(self) -> None:
        self._end_line()
        self.stream.flush()
