"""The monitor: every few seconds, what the server says about itself (metrics endpoint, model
statistics) and what only the engine can see (/proc of tritonserver and of each python backend
stub, the run's footprint in /dev/shm, GPU memory through NVML when a GPU is there), sent to the
aggregator as one KIND_RESOURCES message of flat series:

  proc/server/<field>, proc/stub/<instance>/<field>   fields of procfs.sample_process
  model/<model>/<metric>                              metrics.MODEL_METRICS and stats_*
  truth/<instance>/<metric>                           faulty models' ground truth (tests only)
  server/pinned_used_bytes, gpu/<uuid>/used_bytes     when the server exports them
  shm/files, shm/bytes                                /dev/shm entries of the run
  monitor/sample_ms                                   what one sample cost
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from engine.server import find_stub_processes
from workers.heap import ReleaseTimer, limit_arenas
from workers.lifeline import stop_with_parent
from workers.sender import TelemetrySender
from workers.telemetry import KIND_RESOURCES, RecordBuffer

from .metrics import fetch_metrics, fetch_model_stats, safe_name
from .procfs import listener_pid, sample_process, shm_footprint


@dataclass(frozen=True)
class MonitorSpec:
    server_pid: int | None  # None: an attached server, maybe remote: no /proc
    metrics_url: str
    http_url: str
    run_id: str
    shm_prefixes: tuple[str, ...]
    interval_s: float
    telemetry_endpoint: str
    deadline_s: float  # from start
    # A fleet: each server's series are named "target/<name>/<series>" (see engine.cluster.series).
    series_prefix: str = ""
    telemetry_keys: Any = None  # CURVE client keys when the telemetry endpoint leaves the host
    # An attached server on the monitor's own node: found by the process listening on this port.
    server_port: int = 0


class _Nvml:
    """Per-process GPU memory of the server through NVML, when nvidia-ml-py and a GPU exist."""

    def __init__(self) -> None:
        self.reason = ""
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as exc:  # noqa: BLE001 - no library, no driver, no GPU: "not measured"
            self._nvml = None
            self._handles = []
            self.reason = f"GPU memory not measured: {exc or type(exc).__name__}"

    def process_bytes(self, pid: int) -> float | None:
        if self._nvml is None:
            return None
        total = 0.0
        for handle in self._handles:
            for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory:
                    total += proc.usedGpuMemory
        return total


DETAIL_EVERY = 10  # samples between two reads of PSS and mappings, and between two stub searches


class Monitor:
    def __init__(self, spec: MonitorSpec) -> None:
        self.spec = spec
        self.stubs: dict[str, int] = {}  # instance -> pid, as of the last sample
        self.errors: list[str] = []
        self._count = 0
        self._known: list = []  # the stubs found by the last search of the process tree
        self.server_pid = spec.server_pid
        if self.server_pid is None and spec.server_port:
            self.server_pid = listener_pid(spec.server_port)
        self._nvml = _Nvml() if self.server_pid is not None else None

    def sample(self) -> dict[str, float]:
        out = self._sample()
        prefix = self.spec.series_prefix
        return {f"{prefix}{k}": v for k, v in out.items()} if prefix else out

    def _sample(self) -> dict[str, float]:
        began = time.perf_counter()
        out: dict[str, float] = {}
        spec = self.spec
        detailed = self._count % DETAIL_EVERY == 0
        self._count += 1
        if self.server_pid is None and spec.server_port and detailed:  # an attached server that came back
            self.server_pid = listener_pid(spec.server_port)
        if self.server_pid is not None:
            server = sample_process(self.server_pid, detailed)
            if server is not None:
                out.update({f"proc/server/{k}": v for k, v in server.items()})
            # Searching the server's threads for children costs ~90 ms: done every few samples,
            # and at once when a known stub is gone.
            if detailed or not self._known:
                self._known = find_stub_processes(self.server_pid)
            stubs = {}
            for stub in self._known:
                figures = sample_process(stub.pid, detailed)
                if figures is None:
                    self._count = 0  # search again next time: it may have been replaced
                    continue
                name = safe_name(stub.instance or f"pid{stub.pid}")
                stubs[name] = stub.pid
                out.update({f"proc/stub/{name}/{k}": v for k, v in figures.items()})
            self.stubs = stubs
            if server is None and spec.server_port:
                self.server_pid = None  # gone: look for the new one by its port next time
            gpu = self._nvml.process_bytes(self.server_pid) if self._nvml and self.server_pid else None
            if gpu is not None:
                out["proc/server/gpu_bytes"] = gpu
        files, size = shm_footprint(spec.shm_prefixes)
        out["shm/files"], out["shm/bytes"] = float(files), float(size)
        self.errors = []
        for figures, error in (fetch_metrics(spec.metrics_url), fetch_model_stats(spec.http_url)):
            out.update(figures)
            if error:
                self.errors.append(error)
        out["monitor/sample_ms"] = (time.perf_counter() - began) * 1000
        return out


def monitor_main(spec: MonitorSpec) -> None:
    """Process entry point (spawn context): sample until the deadline or SIGTERM/SIGINT."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    parent = multiprocessing.parent_process()
    stop_with_parent(parent.pid if parent else None)
    limit_arenas()  # before ZeroMQ's I/O thread starts
    run_monitor(spec, stop)


def run_monitor(spec: MonitorSpec, stop: threading.Event) -> None:
    """Sample until the deadline or `stop` (a process's signal, or a Ray actor's stop call)."""
    sender_name = f"monitor-{spec.series_prefix.strip('/').rsplit('/', 1)[-1]}" if spec.series_prefix else "monitor"
    sender = TelemetrySender(spec.telemetry_endpoint, sender_name, RecordBuffer((), (), ""), keys=spec.telemetry_keys)
    monitor = Monitor(spec)
    end = time.monotonic() + spec.deadline_s
    reported: set[str] = set()
    heap = ReleaseTimer()
    try:
        if monitor._nvml is not None and monitor._nvml.reason:
            sender.event("monitor_note", "", "", monitor._nvml.reason)
        while not stop.is_set() and time.monotonic() < end:
            before = dict(monitor.stubs)
            samples = monitor.sample()
            sender.send(KIND_RESOURCES, {"time_ns": time.monotonic_ns(), "samples": samples})
            for name, pid in monitor.stubs.items():
                if before.get(name) != pid:
                    sender.event("process_started", name.rsplit("_", 2)[0], "", f"stub {name} pid {pid}")
            for name, pid in before.items():
                if monitor.stubs.get(name) != pid:
                    sender.event("process_gone", name.rsplit("_", 2)[0], "", f"stub {name} pid {pid} is gone")
            for error in monitor.errors:
                if error not in reported:  # each reason once: a server that is down says so every sample
                    reported.add(error)
                    sender.event("monitor_error", "", "", error)
            sender.flush_events()
            heap.tick()
            stop.wait(max(0.0, spec.interval_s - samples[f"{spec.series_prefix}monitor/sample_ms"] / 1000))
        if stop.is_set():  # stopped after the load: one last look, so the server's final counts are kept
            sender.send(KIND_RESOURCES, {"time_ns": time.monotonic_ns(), "samples": monitor.sample()})
    finally:
        sender.close()


def start_monitor(spec: MonitorSpec) -> multiprocessing.process.BaseProcess:
    process = multiprocessing.get_context("spawn").Process(target=monitor_main, args=(spec,), name="monitor")
    process.start()
    return process
