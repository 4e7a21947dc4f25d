"""Progress as a run goes on: on a terminal one line rewritten in place; in a log a plain line
every 10 s; for a library's callback whole lines only. A verdict is said the moment it is seen,
once."""

from __future__ import annotations

import io
import signal
import threading

import pytest

from engine.live_status import LiveStatus
from engine.live_view import LiveView
from engine.runner.signals import StopSignals

pytestmark = pytest.mark.timeout(30)


def _status(verdicts: list[str]) -> LiveStatus:
    return LiveStatus(requests=1200, rate=400.0, p99_ms=3.25, p99_recent_ms=4.5, errors=1, verdicts=verdicts)


def test_a_callback_gets_whole_lines_verdicts_once_and_progress_every_ten_seconds() -> None:
    lines: list[str] = []
    view = LiveView("line", say=lines.append)  # "line" needs a terminal: a callback gets plain lines
    for second in range(1, 26):
        view.update(_status(["LEAK x"] if second >= 3 else []), float(second), 100.0 - second)
    view.say("[00:00:25] incident: worker 1 exited")
    view.close()
    assert not any("\r" in line or "\n" in line for line in lines)
    assert [line for line in lines if "VERDICT" in line] == ["[00:00:03] VERDICT LEAK x"]
    progress = [line for line in lines if "requests" in line]
    assert len(progress) == 2 and progress[0].startswith("[00:00:10] 1200 requests, 400/s, p99 3.2 ms")
    assert "recent worst 4.5 ms" in progress[0] and "1 verdicts" in progress[1]
    assert lines[-1].endswith("incident: worker 1 exited")


def test_on_a_terminal_the_progress_line_is_rewritten_and_a_verdict_breaks_it() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    view = LiveView("auto", stream)
    view.update(_status([]), 1.0, 9.0)
    view.update(_status(["STALL m"]), 2.0, 8.0)
    view.close()
    text = stream.getvalue()
    assert text.startswith("\r[00:00:01] 1200 requests") and "\n[00:00:02] VERDICT STALL m\n\r[00:00:02]" in text
    assert text.endswith("\n")


def test_off_shows_no_progress_but_says_what_the_run_says() -> None:
    lines: list[str] = []
    view = LiveView("off", say=lines.append)
    view.update(_status(["LEAK x"]), 30.0, 0.0)
    view.say("report: results/r1")
    assert lines == ["report: results/r1"]


def test_stop_signals_are_taken_in_the_main_thread_only() -> None:
    before = signal.getsignal(signal.SIGTERM)
    made: list[StopSignals] = []
    thread = threading.Thread(target=lambda: made.append(StopSignals()))
    thread.start()
    thread.join(5)
    assert made and signal.getsignal(signal.SIGTERM) is before  # a library's run in a thread: nothing installed
    made[0].restore()
    signals = StopSignals()
    try:
        signal.raise_signal(signal.SIGTERM)
        assert signals.stop_requested == 1
    finally:
        signals.restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_caller_stops_a_run_in_a_thread_through_its_event() -> None:
    stop = threading.Event()
    made: list[StopSignals] = []
    thread = threading.Thread(target=lambda: made.append(StopSignals(stop)))
    thread.start()
    thread.join(5)
    assert not made[0].asked
    stop.set()
    assert made[0].asked and made[0].why() == "by the caller"
