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
- A sequence's START may wait in the server's sequence backlog while every slot is held (a slot
  frees when its holder ends, or idles out after the sequence idle timeout): it is allowed the
  backlog bound (`start_bound_s`) instead of T. A START that waits past it is a backlog that
  stopped draining (a hung holder): STALL, with the backlog figures as evidence. The other
  requests of a sequence hold a slot already and keep T: a holder that hangs is a stall.
- SEQ-STALL(model, sequence): an open sequence with no progress for T plus the idle timeout, or,
  still at its START, for the backlog bound; capped by the plan's deadline.

Each model (and each sequence) is raised once; the verdict keeps the age at which it was seen.
"""

from __future__ import annotations

import collections
import dataclasses
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
TRITON_DEFAULT_IDLE_S = 1.0  # max_sequence_idle_microseconds unset: what a model of unknown config gets
REAPER_SLACK_S = 1.0  # the server frees an idle slot up to about this late (and the heartbeat is 1 s)
HEARTBEAT_S = 1.0


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


def slots(timing: ModelTiming) -> int:
    """Sequences a model serves at once: one per instance, max_batch per instance when it batches."""
    return max(1, timing.instances * max(1, timing.max_batch))


def start_bound_s(params: StallParams, timing: ModelTiming, in_flight: int, waiting: int,
                  p999_s: float = 0.0) -> float:
    """How long a sequence's START may take while `waiting` STARTs of its model (itself included)
    wait for a slot: T + ceil(waiting / slots) x (idle timeout + 1 s + T).

    The server's backlog is first in, first out: a START gets a slot once those ahead of it have
    theirs, and every slot passes to the next waiting sequence at least once per "round". A round
    is at most what the holder still takes: its remaining steps (sent back to back, each within T;
    a generated sequence model without an execute delay runs a whole sequence in milliseconds),
    then, for a holder that stops without END (sequence_no_end), the idle timeout until the server
    reaps it, plus 1 s for the reaper's and the heartbeat's granularity. With at most `waiting`
    sequences ahead, ceil(waiting / slots) rounds give the START its slot, and T more its answer.
    (A model of unknown configuration gets Triton's default idle timeout, 1 s.)"""
    limit = threshold_s(params, timing, in_flight, p999_s)
    idle = timing.sequence_idle_s or TRITON_DEFAULT_IDLE_S
    return limit + math.ceil(max(1, waiting) / slots(timing)) * (idle + REAPER_SLACK_S + limit)


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
    # model -> (sequence STARTs in flight, start of the oldest): sequences that may be waiting in
    # the server's backlog for a slot. `oldest_in_flight_s` leaves them out.
    starts: Mapping[str, tuple[int, float]] = field(default_factory=dict)


def instance_model(instance: str) -> str:
    """Triton names instances <model>_<group>_<index>."""
    parts = instance.rsplit("_", 2)
    return parts[0] if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit() else instance


def _cpu_used(t: np.ndarray, cpu: np.ndarray, since_s: float, now_s: float) -> float | None:
    """CPU seconds used between the first sample at or after `since_s` and the last one at or
    before `now_s`. Not from the sample before `since_s`: the holder's work on the requests before
    the one it hangs on (a sequence's earlier steps, a first execution's warm-up) would count as
    CPU it used while holding, and at a light load outweigh what an idle sibling used (a CI run
    named the healthy sibling so: 0.05 s against 0.02, all of the holder's before the hang)."""
    first = int(np.searchsorted(t, since_s, side="left"))
    last = int(np.searchsorted(t, now_s, side="right")) - 1
    if last <= first:
        return None  # fewer than two samples since the request started: cannot tell yet
    return float(cpu[last] - cpu[first])


@dataclass
class StallDetector:
    params: StallParams
    timings: Mapping[str, ModelTiming]
    raised: list[Verdict] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)
    # model -> its STALL verdict as last said: one fault, one verdict. Later evidence of the same
    # stall (its duration, a more precise subject) comes back from `take_updates`, not as a new one.
    _stalls: dict[str, Verdict] = field(default_factory=dict)
    _updates: list[Verdict] = field(default_factory=list)
    # model -> (evaluation time, STARTs waiting), since its oldest waiting START was sent
    _backlog: dict[str, collections.deque[tuple[float, int]]] = field(default_factory=dict)

    def evaluate(self, view: StallView, p999_s: Mapping[str, float] | None = None) -> list[Verdict]:
        out: list[Verdict] = []
        p999_s = p999_s or {}
        self._note_backlog(view)
        for model, oldest in view.oldest_in_flight_s.items():
            timing = self._timing(model)
            limit = threshold_s(self.params, timing, view.in_flight.get(model, 1), p999_s.get(model, 0.0))
            age = view.now_s - oldest
            if age <= limit:
                continue
            quiet = view.now_s - view.last_answer_s.get(model, oldest)
            out += self._model_stall(view, model, oldest, age, quiet, limit)
        for model, (waiting_now, oldest) in view.starts.items():
            # The oldest START stands at the head of the backlog: judged against the backlog bound,
            # with as many STARTs ahead as ever waited since it was sent.
            timing = self._timing(model)
            waiting = self._waiting_since(model, oldest)
            limit = start_bound_s(self.params, timing, view.in_flight.get(model, waiting_now), waiting,
                                  p999_s.get(model, 0.0))
            age = view.now_s - oldest
            if age <= limit:
                continue
            quiet = view.now_s - view.last_answer_s.get(model, oldest)
            out += self._model_stall(view, model, oldest, age, quiet, limit, self._backlog_evidence(
                timing, waiting, limit, waiting_now))
        for (model, sequence), (progress, step) in view.open_sequences.items():
            timing = self._timing(model)
            in_flight = view.in_flight.get(model, 1)
            evidence = {"step": float(step)}
            if step == 0:  # still at its START: it may be waiting in the backlog for a slot
                waiting = self._waiting_since(model, progress)
                limit = start_bound_s(self.params, timing, in_flight, waiting, p999_s.get(model, 0.0))
                evidence.update(self._backlog_evidence(timing, waiting, limit))
            else:
                limit = threshold_s(self.params, timing, in_flight, p999_s.get(model, 0.0))
                limit += timing.sequence_idle_s + 1.0
            if self.params.sequence_deadline_s:
                limit = min(limit, self.params.sequence_deadline_s)
            age = view.now_s - progress
            subject = f"{model} sequence {sequence}"
            if age > limit and subject not in self._seen:
                self._seen.add(subject)
                out.append(Verdict("stall", "SEQ-STALL", subject, progress, view.now_s, age, "s", age, age,
                                   {"threshold_s": limit, **evidence}))
        self.raised += out
        return out

    def _timing(self, model: str) -> ModelTiming:
        return self.timings.get(model, ModelTiming(0.0, 1, 0))

    def _note_backlog(self, view: StallView) -> None:
        """Remember, per model, how many STARTs waited at each evaluation since its oldest waiting
        START was sent: those ahead of that START in the backlog were all waiting when it came."""
        for model in [m for m in self._backlog if m not in view.starts]:
            del self._backlog[model]  # the backlog emptied
        for model, (waiting, oldest) in view.starts.items():
            history = self._backlog.setdefault(model, collections.deque(maxlen=4096))
            while history and history[0][0] < oldest - HEARTBEAT_S:
                history.popleft()
            history.append((view.now_s, waiting))

    def _waiting_since(self, model: str, since_s: float) -> int:
        """The most STARTs of `model` seen waiting since `since_s` (at least 1: the START itself)."""
        return max((n for t, n in self._backlog.get(model, ()) if t >= since_s - HEARTBEAT_S), default=1)

    @staticmethod
    def _backlog_evidence(timing: ModelTiming, waiting: int, bound: float, waiting_now: int | None = None
                          ) -> dict[str, float]:
        evidence = {"waiting_starts": float(waiting), "slots": float(slots(timing)),
                    "idle_timeout_s": timing.sequence_idle_s or TRITON_DEFAULT_IDLE_S, "backlog_bound_s": bound}
        if waiting_now is not None:
            evidence["waiting_starts_now"] = float(waiting_now)
        return evidence

    def take_updates(self) -> list[Verdict]:
        """The open stalls whose evidence changed since the last call (same `fault` as the verdict
        they update): longer, or said more precisely. `at_s` stays the time it was first said;
        `evidence["last_seen_s"]` is the latest evaluation that saw it."""
        updates, self._updates = self._updates, []
        return updates

    def _model_stall(self, view: StallView, model: str, oldest: float, age: float, quiet: float,
                     limit: float, backlog: Mapping[str, float] | None = None) -> list[Verdict]:
        found = self._model_stall_evidence(view, model, oldest, age, quiet, limit, backlog)
        if found is None:
            return []
        verdict, precision = found
        said = self._stalls.get(model)
        if said is None:
            self._stalls[model] = verdict
            return [verdict]
        # The model's stall, seen again (a model that stalls once is watched as one fault for the
        # rest of the run): its first subject unless this one names more, its first start, the
        # longest time without progress seen, the latest evidence.
        if precision <= _precision(said):
            verdict = dataclasses.replace(verdict, subject=said.subject,
                                          evidence={**verdict.evidence, **_named(said.evidence)})
        longest = max(said.size, verdict.size)
        verdict = dataclasses.replace(verdict, since_s=min(said.since_s, verdict.since_s), at_s=said.at_s,
                                      size=longest, low=longest, high=longest,
                                      evidence={**verdict.evidence, "last_seen_s": view.now_s})
        if (verdict.subject, round(verdict.size)) != (said.subject, round(said.size)):
            self._stalls[model] = verdict
            self._updates.append(verdict)
        return []

    def _model_stall_evidence(self, view: StallView, model: str, oldest: float, age: float, quiet: float,
                              limit: float, backlog: Mapping[str, float] | None) -> tuple[Verdict, int] | None:
        """The STALL this evaluation supports, with how precisely it names the culprit (2: named
        instances, 1: the whole model, 0: an instance not known), or None while evidence is awaited."""
        whole = quiet > limit
        used = {name: _cpu_used(t, cpu, oldest, view.now_s) for name, (t, cpu) in view.stub_cpu.items()
                if instance_model(name) == model}
        known = sorted(((u, name) for name, u in used.items() if u is not None))
        evidence = {"threshold_s": limit, "oldest_in_flight_s": age, "no_answer_for_s": quiet,
                    "in_flight": float(view.in_flight.get(model, 0)), "pending": view.pending.get(model, math.nan),
                    **(backlog or {})}
        if whole:
            idle = [name for u, name in known if u < self.params.idle_cpu_s]
            subject = model + (f" instances {', '.join(sorted(idle))}" if idle else "")
            precision = 2 if idle else 1
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
                return None
            subject = f"{model} instance {named or 'unknown'}"
            precision = 2 if named else 0
        return Verdict("stall", "STALL", subject, oldest, view.now_s, age, "s", age, age, evidence,
                       fault=f"stall:{model}"), precision


_NAMING = ("deadlock", "instance_cpu_s", "sibling_cpu_s")  # evidence that goes with a named subject


def _named(evidence: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in evidence.items() if k in _NAMING}


def _precision(verdict: Verdict) -> int:
    if verdict.subject.endswith(" instance unknown"):
        return 0
    return 2 if " instance" in verdict.subject else 1
