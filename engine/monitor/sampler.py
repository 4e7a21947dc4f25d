"""The monitor: every few seconds, what the server says about itself (metrics endpoint, model
statistics) and what only the engine can see (/proc of tritonserver and of each python backend
stub, the run's footprint in /dev/shm, GPU memory through NVML when a GPU is there), sent to the
aggregator as one KIND_RESOURCES message of flat series, named as engine.series_names lists them
(the large-request budget's only with a budget_path).

With a `budget_path` (a server the engine launched on this host), the monitor is also the one that
holds large requests back when the host's memory is under pressure (pressure.PressureGate): it sets
the budget file's hold, which every worker's next large request sees.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from dataclasses import dataclass

from engine.server import find_stub_processes
from workers.heap import ReleaseTimer
from workers.host_budget import HostBudget
from workers.process_setup import enter_process, spawn
from workers.sender import ClientKeys, TelemetrySender
from workers.telemetry import INCIDENT, KIND_RESOURCES, RecordBuffer, ResourceSample

from ..oom import KMSG, KmsgReader, OomWatch
from ..series_names import (
    SAMPLE_MS,
    SERVER,
    SHM_BYTES,
    SHM_FILES,
    budget_series,
    process_series,
    safe_name,
    split_target,
    stub_process,
)
from .metrics import fetch_metrics, fetch_model_stats
from .pressure import GateSettings, MemoryReading, PressureGate, read_memory
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
    # A fleet: each server's series are named "target/<name>/<series>" (series_names.target_prefix).
    series_prefix: str = ""
    telemetry_keys: ClientKeys | None = None  # CURVE client keys when the telemetry endpoint leaves the host
    # An attached server on the monitor's own node: found by the process listening on this port.
    server_port: int = 0
    # The host's large-request budget file (workers.host_budget), "" for none (an attached or remote
    # server, tests): with one, the monitor samples it and sets its memory-pressure hold.
    budget_path: str = ""
    pressure_gate: GateSettings = GateSettings()  # when the hold goes on and off (pressure.GateSettings)


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
        self.gate = PressureGate(spec.pressure_gate)
        self.notes: list[str] = []  # the gate's changes of state in the last sample
        self._budget: HostBudget | None = None

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
                out.update({process_series(SERVER, k): v for k, v in server.items()})
            # Searching the server's threads for children is the sample's dearest part: done every
            # few samples, and at once when a known stub is gone.
            if detailed or not self._known:
                self._known = find_stub_processes(self.server_pid)
            stubs = {}
            for stub in self._known:
                figures = sample_process(stub.pid, detailed)
                if figures is None:
                    self._count = 0  # search again next time: it may have been replaced
                    continue
                instance = stub.instance or f"pid{stub.pid}"
                stubs[safe_name(instance)] = stub.pid
                process = stub_process(instance)
                out.update({process_series(process, k): v for k, v in figures.items()})
            self.stubs = stubs
            if server is None and spec.server_port:
                self.server_pid = None  # gone: look for the new one by its port next time
            gpu = self._nvml.process_bytes(self.server_pid) if self._nvml and self.server_pid else None
            if gpu is not None:
                out[process_series(SERVER, "gpu_bytes")] = gpu
        files, size = shm_footprint(spec.shm_prefixes)
        out[SHM_FILES], out[SHM_BYTES] = float(files), float(size)
        self.errors = []
        self.notes = []
        reading = read_memory()
        out.update(reading.series())
        if spec.budget_path:
            out.update(self._budget_series(reading))
        for figures, error in (fetch_metrics(spec.metrics_url), fetch_model_stats(spec.http_url)):
            out.update(figures)
            if error:
                self.errors.append(error)
        out[SAMPLE_MS] = (time.perf_counter() - began) * 1000
        return out

    def _budget_series(self, reading: MemoryReading) -> dict[str, float]:
        """The budget's figures, after setting its hold from the gate (when the file says otherwise:
        a monitor that restarted takes over the hold its predecessor left)."""
        if self._budget is None:
            try:
                self._budget = HostBudget.open(self.spec.budget_path)
            except OSError as exc:
                self.errors.append(f"host budget {self.spec.budget_path} not readable: {exc}")
                return {}
        before = self.gate.holding
        hold = self.gate.update(reading)
        if hold != before:
            self.notes.append(self.gate.reason)
        figures = self._budget.figures()
        if figures.pressure != hold:
            self._budget.set_pressure(hold)
        values = {"limit_bytes": figures.limit_bytes, "in_flight_bytes": figures.in_flight_bytes,
                  "peak_bytes": figures.peak_bytes, "granted": figures.granted, "waits": figures.waits,
                  "wait_s": figures.wait_s, "skipped": figures.skipped, "pressure": hold}
        return {budget_series(field): float(value) for field, value in values.items()}

    def large_bytes_in_flight(self) -> int | None:
        return self._budget.figures().in_flight_bytes if self._budget is not None else None

    def close(self) -> None:
        """Let go of the hold: with nobody left to watch the host, a held budget would hold the
        workers' large requests back for good (the budget's limit still applies)."""
        if self._budget is not None:
            try:
                if self.gate.holding:
                    self._budget.set_pressure(False)
            finally:
                self._budget.close()
                self._budget = None


def monitor_main(spec: MonitorSpec) -> None:
    """Process entry point (spawn context): sample until the deadline or SIGTERM/SIGINT."""
    stop = threading.Event()
    target = split_target(spec.series_prefix)[0]  # "" with one server
    # The heap timer it returns is left: run_monitor ticks one of its own, as it does in a Ray actor.
    enter_process(spec.run_id, f"monitor {target}".rstrip(), stop=stop.set, stop_on=(signal.SIGTERM, signal.SIGINT),
                  watch=True)
    run_monitor(spec, stop)


def run_monitor(spec: MonitorSpec, stop: threading.Event) -> None:
    """Sample until the deadline or `stop` (a process's signal, or a Ray actor's stop call)."""
    sender_name = f"monitor-{split_target(spec.series_prefix)[0]}" if spec.series_prefix else "monitor"
    sender = TelemetrySender(spec.telemetry_endpoint, sender_name, RecordBuffer((), (), ""), keys=spec.telemetry_keys)
    monitor = Monitor(spec)
    end = time.monotonic() + spec.deadline_s
    reported: set[str] = set()
    heap = ReleaseTimer()
    oom = stub_oom_watch() if spec.budget_path else None  # a server launched on this host: its stubs' deaths
    try:
        if monitor._nvml is not None and monitor._nvml.reason:
            sender.event("monitor_note", "", "", monitor._nvml.reason)
        while not stop.is_set() and time.monotonic() < end:
            before = dict(monitor.stubs)
            samples = monitor.sample()
            sender.send(KIND_RESOURCES, ResourceSample(time.monotonic_ns(), samples).to_body())
            for name, pid in monitor.stubs.items():
                if before.get(name) != pid:
                    sender.event("process_started", name.rsplit("_", 2)[0], "", f"stub {name} pid {pid}")
            for name, pid in before.items():
                if monitor.stubs.get(name) != pid:
                    sender.event("process_gone", name.rsplit("_", 2)[0], "", f"stub {name} pid {pid} is gone")
                    kill = oom.check(pid, f"stub {name}") if oom is not None else None
                    if kill is not None:  # the server starts a stub again itself: only the kernel says why
                        sender.event(INCIDENT, "", "", kill.text(monitor.large_bytes_in_flight()), always_text=True)
            for note in monitor.notes:
                sender.event("memory_pressure", "", "", note)
            for error in monitor.errors:
                if error not in reported:  # each reason once: a server that is down says so every sample
                    reported.add(error)
                    sender.event("monitor_error", "", "", error)
            sender.flush_events()
            heap.tick()
            stop.wait(max(0.0, spec.interval_s - samples[spec.series_prefix + SAMPLE_MS] / 1000))
        if stop.is_set():  # stopped after the load: one last look, so the server's final counts are kept
            sender.send(KIND_RESOURCES, ResourceSample(time.monotonic_ns(), monitor.sample()).to_body())
    finally:
        monitor.close()
        sender.close()
        if oom is not None:
            oom.close()


def stub_oom_watch() -> OomWatch | None:
    """The kernel's log from now on, to tell a stub the OOM killer took (None where it cannot be
    read: a stub is not our child, its exit status is unknown, and a cgroup counter could not say
    which process it counted)."""
    try:
        return OomWatch(KmsgReader.open(KMSG), None)
    except OSError:
        return None


def start_monitor(spec: MonitorSpec) -> multiprocessing.process.BaseProcess:
    return spawn(monitor_main, spec, "monitor")
