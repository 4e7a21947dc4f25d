"""The monitor's resource samples on their way to the detectors.

Each sample goes to the one detector that reads its series: RssAnon of a process to a leak
detector, fds and threads of a process and the run's /dev/shm footprint to a floor detector, a
stub's CPU seconds to the recent samples the stall detector reads. Series no detector reads (RSS
of files, PSS, the server's metrics...) are only stored. Nothing here keeps every sample, so the
aggregator holds the same memory after 6.5 days as after an hour.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from engine.detectors.discrete import RISE_GATES, DiscreteLeakDetector
from engine.detectors.leak import LeakDetector
from engine.detectors.settings import DetectorSettings
from engine.detectors.stall import instance_model
from engine.detectors.verdict import Verdict
from engine.series_names import (
    PENDING,
    SERVER,
    field_of,
    is_shm_series,
    model_metric,
    process_of,
    split_process,
    split_target,
    stub_instance,
)

from .series import RecentSamples

LEAK_FIELD = "rss_anon"  # heap growth; RssShmem grows with registered regions and is not a leak
# Countable resources judged by their floors: per process, and the run's /dev/shm footprint.
DISCRETE_FIELDS = ("fds", "threads")
STUB_CPU = "cpu_s"
# A stall is judged within 2 T of its request's start, T being 5-10 s unless a model is slow by
# configuration: 15 minutes of CPU samples name the instance of any stall up to T = 7.5 min.
STUB_CPU_HORIZON_S = 900.0


class ResourceWatch:
    def __init__(self, settings: DetectorSettings, run_s: float) -> None:
        self.settings = settings
        self.run_s = run_s  # planned run length
        self.pids: dict[str, float] = {}  # process name -> pid of its latest sample
        # process name -> run second its current pid was first seen, if not with the run's first
        # samples: a process that started later (a restart) gets its own warm-up.
        self.started: dict[str, float] = {}
        self._first_at: float | None = None
        self._pending_on: dict[str, dict[str, float]] = {}  # target ("" for one server) -> model -> pending
        self.leak: dict[str, LeakDetector] = {}  # series name -> its detector
        self.discrete: dict[str, DiscreteLeakDetector] = {}
        self.stub_cpu: dict[str, RecentSamples] = {}  # stub instance -> CPU seconds

    def add(self, at: float, samples: Mapping[str, float], requests: float, completed: Mapping[str, int]) -> None:
        """One monitor sample at run second `at`; `requests`: completed requests of the run so far,
        `completed`: per model (a stub's leak is judged against its own model's requests)."""
        # Pids first: a process with a new pid starts new series before its samples are read.
        if self._first_at is None:
            self._first_at = at
        for name, value in samples.items():
            process = process_of(name)
            if process is not None and field_of(name) == "pid":
                if self.pids.get(process, value) != value:
                    self._restart(process)
                    self.started[process] = at
                elif process not in self.pids and at > self._first_at:
                    self.started[process] = at  # first seen after the run's first sample
                self.pids[process] = value
        for name, value in samples.items():  # queues before memory: a backlog explains growth
            target, plain = split_target(name)
            parsed = model_metric(plain)
            if parsed is not None and parsed[1] == PENDING:
                self._pending_on.setdefault(target, {})[parsed[0]] = float(value)
        for name, value in samples.items():
            target, plain = split_target(name)
            if is_shm_series(plain):
                self._discrete(name, field_of(plain)).add(at, float(value))
                continue
            process = process_of(name)
            if process is None:
                continue
            kind = field_of(name)
            instance = stub_instance(process)
            if kind == LEAK_FIELD:
                model = instance_model(instance) if instance is not None else ""
                queued = self._pending_on.get(target) if split_process(process)[0] == SERVER else None
                self._leak(name, process).add(at, float(value), float(completed.get(model, 0) if model else requests),
                                              sum(queued.values()) if queued else None)
            elif kind in DISCRETE_FIELDS:
                self._discrete(name, kind).add(at, float(value))
            elif kind == STUB_CPU and not target and instance is not None:
                recent = self.stub_cpu.get(instance)
                if recent is None:
                    recent = self.stub_cpu[instance] = RecentSamples(STUB_CPU_HORIZON_S)
                recent.append(at, float(value))

    @property
    def pending(self) -> dict[str, float]:
        """Model -> the (one) server's pending request count, as last sampled."""
        return self._pending_on.get("", {})

    def _restart(self, process: str) -> None:
        """A new pid behind a process name: its old series and leak state do not continue."""
        for detectors in (self.leak, self.discrete):
            for name in [n for n in detectors if process_of(n) == process]:
                del detectors[name]
        instance = stub_instance(process)
        if instance is not None and not split_process(process)[1]:  # only one server's stubs are kept
            self.stub_cpu.pop(instance, None)

    def _leak(self, name: str, process: str) -> LeakDetector:
        detector = self.leak.get(name)
        if detector is None:
            pid = self.pids.get(process)
            detector = self.leak[name] = LeakDetector(
                f"{process} (pid {pid:.0f})" if pid else process, self.settings.leak, self.run_s,
                started_s=self.started.get(process, 0.0))
        return detector

    def _discrete(self, name: str, unit: str) -> DiscreteLeakDetector:
        detector = self.discrete.get(name)
        if detector is None:
            process = process_of(name)
            pid = self.pids.get(process or "")
            target = split_target(name)[0]
            subject = f"{process} (pid {pid:.0f}) {unit}" if pid else f"{process} {unit}" if process else \
                f"the run's /dev/shm {unit}" + (f" on {target}" if target else "")
            params = dataclasses.replace(self.settings.discrete, min_rise=RISE_GATES[unit])
            detector = self.discrete[name] = DiscreteLeakDetector(subject, unit, params,
                                                                  started_s=self.started.get(process or "", 0.0))
        return detector

    def evaluate(self, now: float) -> list[Verdict]:
        """The leak and floor detectors, each on what it has been fed."""
        out: list[Verdict] = []
        for detector in self.discrete.values():
            out += detector.evaluate(now)
        for name, detector in self.leak.items():
            out += [self._name_queue(v, split_target(name)[0]) if v.kind == "BACKLOG" else v
                    for v in detector.evaluate(now)]
        return out

    def _name_queue(self, verdict: Verdict, target: str) -> Verdict:
        """A BACKLOG names the model whose queue holds the most requests now."""
        queues = self._pending_on.get(target, {})
        model = max(queues, key=queues.__getitem__) if queues else "?"
        return dataclasses.replace(verdict, subject=f"{verdict.subject}: queue of {model}",
                                   evidence={**verdict.evidence, "model_queued": queues.get(model, math.nan)})

    def stub_cpu_since(self, since_s: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each stub's CPU samples from the last one at or before `since_s` on."""
        return {name: recent.recent(since_s) for name, recent in self.stub_cpu.items()}
