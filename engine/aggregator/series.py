"""Resource series as the monitor's samples arrive: appended, read as numpy arrays by the
detectors, reset when the process behind a series is replaced (a new pid is a new series)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Series:
    t: list[float] = field(default_factory=list)
    v: list[float] = field(default_factory=list)
    requests: list[float] = field(default_factory=list)  # cumulative completed requests at each sample

    def append(self, t: float, v: float, requests: float) -> None:
        self.t.append(t)
        self.v.append(v)
        self.requests.append(requests)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.asarray(self.t), np.asarray(self.v), np.asarray(self.requests)

    def recent(self, since_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Samples from the last one at or before `since_s` on (what a delta since then needs)."""
        t = np.asarray(self.t)
        first = max(0, int(np.searchsorted(t, since_s, side="right")) - 1)
        return t[first:], np.asarray(self.v[first:])


TARGET_PREFIX = "target/"  # a fleet's monitors name their series target/<server name>/<series>


def split_target(series_name: str) -> tuple[str, str]:
    """'target/a/proc/server/fds' -> ('a', 'proc/server/fds'); a one-server name -> ('', name)."""
    if series_name.startswith(TARGET_PREFIX):
        target, _, rest = series_name[len(TARGET_PREFIX):].partition("/")
        return target, rest
    return "", series_name


def process_of(series_name: str) -> str | None:
    """'proc/stub/m_0_1/rss_anon' -> 'stub/m_0_1'; 'proc/server/fds' -> 'server';
    'target/a/proc/server/fds' -> 'server on a'; else None."""
    target, rest = split_target(series_name)
    if not rest.startswith("proc/"):
        return None
    process = rest[len("proc/"):].rsplit("/", 1)[0]
    return f"{process} on {target}" if target else process


def field_of(series_name: str) -> str:
    return series_name.rsplit("/", 1)[-1]
