"""Where a latency drift's added time went: the server's queue, its compute, or outside the server
(DETECTION.md: "DRIFT(model, stage) names the stage that moved").

Triton's metrics give, per model, cumulative request counts and cumulative microseconds spent
queued and in compute (input, infer, output). Between two samples, Δµs / Δrequests is the mean
time per request in each stage. A DRIFT compares the windows just after warm-up (its baseline)
with the latest ones: the same spans of these series say how much of the added latency the
server's queue and compute account for; the rest was spent outside the server (the network, the
client). Of each model's series only the first samples (where baselines lie) and the latest are
kept, so the state does not grow with the run.
"""

from __future__ import annotations

import array
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from engine.detectors.settings import DetectorSettings
from engine.series_names import model_metric

COUNT = "success"  # nv_inference_request_success: requests that completed
STAGES = {"queue": ("queue_us",), "compute": ("compute_input_us", "compute_infer_us", "compute_output_us")}
FIELDS = (COUNT, *(name for names in STAGES.values() for name in names))


@dataclass(frozen=True)
class StageShare:
    """Per-request milliseconds added between the baseline and the current span, by stage."""

    queue_ms: float
    compute_ms: float
    outside_ms: float  # client latency added beyond what the server's stages account for

    @property
    def where(self) -> str:
        added = {"the server's queue": self.queue_ms, "the server's compute": self.compute_ms,
                 "outside the server (network or client)": self.outside_ms}
        return max(added, key=added.__getitem__)


class StageHistory:
    """One model's cumulative stage samples: the first `head_s` seconds of them and the latest
    `tail_s` seconds, each sample a row of (run second, *values) in a flat array of doubles.

    Kept as Python tuples, a sample was eight objects (~300 bytes) in Python's object allocator;
    the long profile keeps about 70 minutes of 5 s samples per model, so over a run's first hour
    the aggregator's RssAnon rose by ~2 MiB for the smoke models and the arenas those objects pinned
    stayed mapped (the soak's heap probe: Python's allocated blocks +50,000, malloc flat). As
    doubles the same samples take 48 bytes each, in two buffers."""

    WIDTH = 1 + len(FIELDS)

    def __init__(self, head_s: float, tail_s: float) -> None:
        self.head_s, self.tail_s = head_s, tail_s
        self._head = array.array("d")
        self._tail = array.array("d")

    @property
    def head(self) -> np.ndarray:
        """The head's samples, one row each (a copy)."""
        return np.array(self._head, dtype=np.float64).reshape(-1, self.WIDTH)

    @property
    def tail(self) -> np.ndarray:
        """The latest samples, one row each (a copy)."""
        return np.array(self._tail, dtype=np.float64).reshape(-1, self.WIDTH)

    def add(self, at: float, values: tuple[float, ...]) -> None:
        if not self._head or at - self._head[0] <= self.head_s:
            self._head.append(at)
            self._head.extend(values)
            return
        tail, width = self._tail, self.WIDTH
        tail.append(at)
        tail.extend(values)
        old = 0
        while old < len(tail) and tail[old] < at - self.tail_s:
            old += width
        if old:
            del tail[:old]

    def mean_ms(self, start_s: float, end_s: float) -> dict[str, float] | None:
        """Mean milliseconds per request in each stage over [start_s, end_s], between the last
        sample at or before its start and the first at or after its end (the nearest ones where
        the samples do not reach that far); None without requests between them."""
        samples = np.concatenate((self.head, self.tail))
        if not len(samples):
            return None
        times = samples[:, 0]
        first = samples[max(0, int(np.searchsorted(times, start_s, side="right")) - 1)]
        last = samples[min(len(samples) - 1, int(np.searchsorted(times, end_s, side="left")))]
        if last[0] <= first[0]:
            return None
        delta = (last[1:] - first[1:]).tolist()
        if delta[0] <= 0:
            return None
        out, index = {}, 1
        for stage, names in STAGES.items():
            out[stage] = sum(delta[index:index + len(names)]) / delta[0] / 1000.0
            index += len(names)
        return out


class StageWatch:
    """The stage series of every model, from the monitor's samples (model/<m>/<field>)."""

    def __init__(self, head_s: float, tail_s: float) -> None:
        self.head_s, self.tail_s = head_s, tail_s
        self.models: dict[str, StageHistory] = {}

    @classmethod
    def for_settings(cls, settings: DetectorSettings) -> StageWatch:
        """The spans a drift reads: its baseline lies in the first windows after warm-up (and the
        leak warm-up), its current windows are the latest."""
        d = settings.drift
        return cls(head_s=(d.warmup_windows + d.baseline_windows + 2) * settings.window_s + settings.leak.warmup_s,
                   tail_s=(d.current_windows + 2) * settings.window_s)

    @property
    def filled_s(self) -> float:
        """The run second by which every model's history holds all it will ever hold: until then
        the aggregator's memory grows by design (tools/soak/real.py measures growth after it too)."""
        return self.head_s + self.tail_s

    def add(self, at: float, samples: Mapping[str, float]) -> None:
        found: dict[str, dict[str, float]] = {}
        for name, value in samples.items():
            parsed = model_metric(name)
            if parsed is None:
                continue  # not a model's, or a fleet's (target/...) servers: they are not attributed
            model, field = parsed
            if field in FIELDS:
                found.setdefault(model, {})[field] = float(value)
        for model, values in found.items():
            if len(values) == len(FIELDS):
                history = self.models.get(model)
                if history is None:
                    history = self.models[model] = StageHistory(self.head_s, self.tail_s)
                history.add(at, tuple(values[f] for f in FIELDS))

    def share(self, model: str, baseline: tuple[float, float], current: tuple[float, float],
              added_ms: float) -> StageShare | None:
        """How `added_ms` of client latency between the two spans splits over the stages."""
        history = self.models.get(model)
        if history is None:
            return None
        before, now = history.mean_ms(*baseline), history.mean_ms(*current)
        if before is None or now is None:
            return None
        queue, compute = now["queue"] - before["queue"], now["compute"] - before["compute"]
        return StageShare(queue, compute, added_ms - queue - compute)
