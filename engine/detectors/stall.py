"""Stalls and deadlocks, judged by progress, not by age (DETECTION.md §3, model / instance stall
and sequence stall).

A request is stalled when it has been in flight longer than its model's own configuration
explains: T = max(floor, k x delay x ceil(in-flight / (instances x batch)), m x baseline p99.9).
A model with a 2 s execute delay is slow, not stuck.

- STALL(model): work in flight older than T and no terminal response (success or error) from
  the model for T: the whole model stopped.
- STALL(model, instance): a request older than T while the model goes on answering others: one
  instance holds it. The instance is named from the data alone: the model's stub process whose
  CPU time stopped while its siblings' grew (deadlock when it is ~0, livelock when it spins).
- SEQ-STALL(model, sequence): an open sequence with no progress for T plus the idle timeout (a
  sequence may wait for a slot that long in the backlog), capped by the plan's deadline.

Each model (and each sequence) is raised once; the verdict keeps the age at which it was seen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .verdict import Verdict


@dataclass(frozen=True)
class StallParams:
    floor_s: float = 10.0
    delay_factor: float = 3.0  # T >= this x the model's configured delay x queue depth
    p999_factor: float = 5.0  # T >= this x the model's p99.9 latency after warm-up
    idle_cpu_s: float = 0.05  # a stub that used less CPU than this while holding a request is blocked
    sibling_ratio: float = 0.5  # the holder used at most this share of its least busy sibling's CPU
    cpu_resolution_s: float = 0.02  # ...and at least this much less (CPU time counts in 10 ms ticks)
    sequence_deadline_s: float = 0.0  # cap of the sequence threshold; 0 = none


LONG = StallParams()
SMOKE = StallParams(floor_s=5.0)


@dataclass(frozen=True)
class ModelTiming:
    """What a model's configuration says about how long a request may take."""

    delay_s: float
    instances: int
    max_batch: int  # 0 = no batching
    sequence_idle_s: float = 0.0  # sequence models: the server's idle timeout


def threshold_s(params: StallParams, timing: ModelTiming, in_flight: int, p999_s: float = 0.0) -> float:
    slots = max(1, timing.instances * max(1, timing.max_batch))
    depth = max(1, math.ceil(in_flight / slots))
    return max(params.floor_s, params.delay_factor * timing.delay_s * depth, params.p999_factor * p999_s)


@dataclass(frozen=True)
class StallView:
    """The evidence at one evaluation, in run seconds. Only workers whose heartbeats are fresh
    contribute: a dead load generator is never read as a stalled server."""

    now_s: float
    oldest_in_flight_s: Mapping[str, float]  # model -> start of its oldest request in flight
    in_flight: Mapping[str, int]  # model -> requests in flight
    last_answer_s: Mapping[str, float]  # model -> completion time of its last terminal response
    # (model, sequence id) -> (last progress, step index)
    open_sequences: Mapping[tuple[str, str], tuple[float, int]]
    # stub instance name -> (sample times, cumulative CPU seconds), recent samples
    stub_cpu: Mapping[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    pending: Mapping[str, float] = field(default_factory=dict)  # model -> server's pending count


def instance_model(instance: str) -> str:
    """Triton names instances <model>_<group>_<index>."""
    parts = instance.rsplit("_", 2)
    return parts[0] if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit() else instance


def _cpu_used(t: np.ndarray, cpu: np.ndarray, since_s: float, now_s: float) -> float | None:
    """CPU seconds used between the last samples at or before `since_s` and `now_s`."""
    first = int(np.searchsorted(t, since_s, side="right")) - 1
    last = int(np.searchsorted(t, now_s, side="right")) - 1
    if first < 0 or last <= first:
        return None  # no sample from before the request started, or none since: cannot tell
    return float(cpu[last] - cpu[first])


@dataclass
class StallDetector:
    params: StallParams
    timings: Mapping[str, ModelTiming]
    raised: list[Verdict] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)

    def evaluate(self, view: StallView, p999_s: Mapping[str, float] | None = None) -> list[Verdict]:
        out: list[Verdict] = []
        p999_s = p999_s or {}
        for model, oldest in view.oldest_in_flight_s.items():
            timing = self.timings.get(model, ModelTiming(0.0, 1, 0))
            limit = threshold_s(self.params, timing, view.in_flight.get(model, 1), p999_s.get(model, 0.0))
            age = view.now_s - oldest
            if age <= limit:
                continue
            quiet = view.now_s - view.last_answer_s.get(model, oldest)
            out += self._model_stall(view, model, oldest, age, quiet, limit)
        for (model, sequence), (progress, step) in view.open_sequences.items():
            timing = self.timings.get(model, ModelTiming(0.0, 1, 0))
            limit = threshold_s(self.params, timing, view.in_flight.get(model, 1), p999_s.get(model, 0.0))
            limit += timing.sequence_idle_s + 1.0
            if self.params.sequence_deadline_s:
                limit = min(limit, self.params.sequence_deadline_s)
            age = view.now_s - progress
            subject = f"{model} sequence {sequence}"
            if age > limit and subject not in self._seen:
                self._seen.add(subject)
                out.append(Verdict("stall", "SEQ-STALL", subject, progress, view.now_s, age, "s", age, age,
                                   {"threshold_s": limit, "step": float(step)}))
        self.raised += out
        return out

    def _model_stall(self, view: StallView, model: str, oldest: float, age: float, quiet: float,
                     limit: float) -> list[Verdict]:
        whole = quiet > limit
        key = f"{model} {'whole' if whole else 'instance'}"  # one verdict per model and kind of stall
        if key in self._seen:
            return []
        used = {name: _cpu_used(t, cpu, oldest, view.now_s) for name, (t, cpu) in view.stub_cpu.items()
                if instance_model(name) == model}
        known = sorted(((u, name) for name, u in used.items() if u is not None))
        evidence = {"threshold_s": limit, "oldest_in_flight_s": age, "no_answer_for_s": quiet,
                    "in_flight": float(view.in_flight.get(model, 0)), "pending": view.pending.get(model, math.nan)}
        if whole:
            idle = [name for u, name in known if u < self.params.idle_cpu_s]
            subject = model + (f" instances {', '.join(sorted(idle))}" if idle else "")
            if idle:
                evidence["deadlock"] = 1.0
        else:
            # One instance holds the request while its siblings answer: name it when its CPU time
            # stands clearly below every sibling's since the request started; otherwise wait up
            # to 2 x T for the evidence, then say the instance is unknown rather than guess.
            named = None
            if len(known) >= 2:
                (least, candidate), sibling = known[0], known[1][0]
                if least <= self.params.sibling_ratio * sibling and sibling - least >= self.params.cpu_resolution_s:
                    named = candidate
                    evidence["instance_cpu_s"] = least
                    evidence["sibling_cpu_s"] = sibling
                    evidence["deadlock"] = 1.0 if least < self.params.idle_cpu_s else 0.0  # blocked, or spinning
            if named is None and age < 2 * limit:
                return []
            subject = f"{model} instance {named or 'unknown'}"
        self._seen.add(key)
        return [Verdict("stall", "STALL", subject, oldest, view.now_s, age, "s", age, age, evidence)]
