"""SIGINT/SIGTERM during a run: the first asks for a graceful stop, a second SIGINT stops at once."""

from __future__ import annotations

import signal
import threading


class StopSignals:
    """Installed for the run's duration (`restore()` puts the previous handlers back). Python
    takes signals in the main thread only: a run started from another thread (a library user's)
    installs nothing; its caller stops it by setting `stop`, which is the same graceful stop."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop_requested = 0  # signals received
        self._stop = stop
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_requested += 1
        if self.stop_requested > 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt

    @property
    def asked(self) -> bool:
        """A graceful stop was asked for: by a signal, or by the caller's event."""
        return self.stop_requested > 0 or (self._stop is not None and self._stop.is_set())

    def why(self) -> str:
        return "by signal" if self.stop_requested else "by the caller"

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
