"""Progress while a run goes on, from the aggregator's live figures: elapsed and remaining time,
requests/s, the p99 of the last closed windows and the worst of the last few, failed requests
and verdicts. On a terminal one line is rewritten in place every second; in a log a plain line
every 10 s. A new verdict is always printed on a line of its own, the moment it is seen.

With `say` (a library's callback or logger) every line goes there instead, whole: no line is
rewritten in place."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from .live_status import LiveStatus
from .report.stress_report import hhmmss

PLAIN_EVERY_S = 10.0


class LiveView:
    def __init__(self, mode: str = "auto", stream: TextIO | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.stream = stream or sys.stdout
        self._say = say
        if mode == "auto" or (mode == "line" and say is not None):
            mode = "line" if say is None and self.stream.isatty() else "plain"
        self.mode = mode
        self._shown_verdicts = 0
        self._next_plain = PLAIN_EVERY_S
        self._line_open = False

    def update(self, status: LiveStatus, elapsed_s: float, remaining_s: float) -> None:
        if self.mode == "off":
            return
        verdicts = status.verdicts
        for text in verdicts[self._shown_verdicts:]:
            self.say(f"[{hhmmss(elapsed_s)}] VERDICT {text}")
        self._shown_verdicts = max(self._shown_verdicts, len(verdicts))
        line = (f"[{hhmmss(elapsed_s)}] {status.requests} requests, {status.rate:.0f}/s, "
                f"p99 {status.p99_ms:.1f} ms (recent worst {status.p99_recent_ms:.1f} ms), {status.errors} failed, "
                f"{status.wrong} wrong, {len(verdicts)} verdicts, {hhmmss(remaining_s)} left")
        if self.mode == "line":
            self.stream.write("\r" + line + "\033[K")
            self._line_open = True
            self.stream.flush()
        elif elapsed_s >= self._next_plain:
            self._next_plain = elapsed_s + PLAIN_EVERY_S
            self.say(line)

    def say(self, text: str) -> None:
        """A line of its own (an incident, a verdict), without breaking the progress line."""
        if self._say is not None:
            self._say(text)
            return
        self._end_line()
        self.stream.write(text + "\n")
        self.stream.flush()

    def _end_line(self) -> None:
        if self._line_open:
            self.stream.write("\n")
            self._line_open = False

    def close(self) -> None:
        if self._say is None:
            self._end_line()
            self.stream.flush()
