"""The host's memory pressure: procfs parsing, the gate's hysteresis, the monitor's host and budget
series on this machine, the gate holding a real budget file, and the report's host memory section."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from engine.aggregator import LatencyHistogram
from engine.live_status import LiveStatus
from engine.monitor import Monitor, MonitorSpec
from engine.monitor.pressure import (
    GIB,
    GateSettings,
    MemoryReading,
    PressureGate,
    parse_meminfo,
    parse_psi,
    read_memory,
)
from engine.monitor.sampler import run_monitor
from engine.report import load_report, render_summary, write_reports
from engine.store import RunStore
from engine.window_stats import WindowStats
from workers.host_budget import HostBudget
from workers.telemetry import KIND_EVENT, KIND_RESOURCES, unpack

MEMINFO = """MemTotal:       24683792 kB
MemFree:         1234567 kB
MemAvailable:   24338676 kB
Buffers:          102400 kB
HugePages_Total:       0
"""
PSI = """some avg10=12.50 avg60=3.04 avg300=0.71 total=211873
full avg10=4.25 avg60=1.00 avg300=0.20 total=146002
"""
HOST_SERIES = ("host/mem_available_bytes", "host/mem_total_bytes", "host/psi_memory_some_avg10",
               "host/psi_memory_full_avg10")
BUDGET_SERIES = ("budget/limit_bytes", "budget/in_flight_bytes", "budget/peak_bytes", "budget/granted",
                 "budget/waits", "budget/wait_s", "budget/skipped", "budget/pressure")
NO_SERVER = "http://127.0.0.1:9"  # nothing listens: the metrics fetch fails at once, as for a lost server


def _psi_readable() -> bool:
    try:
        with open("/proc/pressure/memory") as handle:
            handle.read()
        return True
    except OSError:
        return False


@pytest.mark.timeout(30)
def test_meminfo_and_psi_text_shapes(tmp_path: Path) -> None:
    assert parse_meminfo(MEMINFO) == (24338676 * 1024, 24683792 * 1024)
    assert parse_meminfo("MemTotal: 1000 kB\n") == (None, 1000 * 1024)  # a kernel before 3.14: no MemAvailable
    psi = parse_psi(PSI)
    assert (psi["some_avg10"], psi["some_avg60"], psi["full_avg10"], psi["full_total"]) == (12.5, 3.04, 4.25, 146002)
    assert parse_psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n") == {
        "some_avg10": 0.0, "some_avg60": 0.0, "some_avg300": 0.0, "some_total": 0.0}  # before 5.13: no full line
    (tmp_path / "meminfo").write_text(MEMINFO)
    (tmp_path / "memory").write_text(PSI)
    reading = read_memory(str(tmp_path / "meminfo"), str(tmp_path / "memory"))
    assert reading == MemoryReading(24338676 * 1024, 24683792 * 1024, 12.5, 4.25)
    # No PSI (an older kernel, or CONFIG_PSI off): its series are absent, never zero.
    without = read_memory(str(tmp_path / "meminfo"), str(tmp_path / "absent"))
    assert without.some_avg10 is None and without.full_avg10 is None
    assert set(without.series()) == {"host/mem_available_bytes", "host/mem_total_bytes"}
    assert read_memory(str(tmp_path / "absent"), str(tmp_path / "absent")).series() == {}
    # This machine's own files parse into plausible figures.
    real = read_memory()
    assert real.total_bytes and 0 < real.available_bytes <= real.total_bytes
    if _psi_readable():
        assert 0.0 <= real.some_avg10 <= 100.0 and 0.0 <= real.full_avg10 <= real.some_avg10 + 1e-9
    else:
        assert real.some_avg10 is None


@pytest.mark.timeout(30)
def test_the_gate_holds_on_pressure_and_lets_go_only_well_below_it() -> None:
    total = 64 * GIB  # reserve: max(5 % of 64 GiB, 1 GiB) = 3.2 GiB; release above 4.8 GiB
    assert GateSettings().reserve_bytes(total) == pytest.approx(3.2 * GIB)
    assert GateSettings().reserve_bytes(8 * GIB) == GIB and GateSettings().reserve_bytes(None) == GIB
    gate = PressureGate()

    def step(available_gib: float, some: float | None) -> bool:
        return gate.update(MemoryReading(available_gib * GIB, total, some, None))

    # PSI climbs: held at 10 %, still held while it decays between 2 and 10 %, let go under 2 %.
    assert [step(30, s) for s in (0.0, 4.0, 9.9, 10.0, 25.0, 9.0, 3.0, 2.0, 1.9, 5.0, 9.9)] == [
        False, False, False, True, True, True, True, True, False, False, False]
    assert "releasing" in gate.reason and "PSI" in gate.reason
    # MemAvailable falls under the reserve: held, until it is back above 1.5 x the reserve.
    assert [step(a, 0.0) for a in (4.0, 3.3, 3.1, 4.0, 4.7, 4.9, 3.3)] == [
        False, False, True, True, True, False, False]
    # Readings that say nothing keep the gate where it is; PSI alone can release it (no meminfo).
    assert step(3.0, 0.0) is True
    assert gate.update(MemoryReading(None, None, None, None)) is True
    assert gate.update(MemoryReading(None, None, 0.5, None)) is False
    # Without PSI (absent, not zero) MemAvailable decides alone.
    assert [step(a, None) for a in (3.0, 4.0, 5.0)] == [True, True, False]


def _spec(**changes: object) -> MonitorSpec:
    fields: dict = dict(server_pid=None, metrics_url=f"{NO_SERVER}/metrics", http_url=NO_SERVER, run_id="pressuretest",
                        shm_prefixes=("tee_pressuretest_",), interval_s=0.2, telemetry_endpoint="", deadline_s=30.0)
    fields.update(changes)
    return MonitorSpec(**fields)


@pytest.mark.timeout(30)
def test_a_sample_holds_the_host_series_and_the_budget_only_with_a_budget(tmp_path: Path) -> None:
    plain = Monitor(_spec()).sample()
    assert plain["host/mem_available_bytes"] > 0 and plain["host/mem_total_bytes"] >= plain["host/mem_available_bytes"]
    assert ("host/psi_memory_some_avg10" in plain) == _psi_readable()
    assert ("host/psi_memory_full_avg10" in plain) == _psi_readable()
    assert not any(name.startswith("budget/") for name in plain)

    path = tmp_path / "budget"
    budget = HostBudget.create(str(path), 4 << 30)
    try:
        lease = budget.try_acquire(1 << 30, 60.0)
        monitor = Monitor(_spec(budget_path=str(path), series_prefix="target/a/"))
        try:
            sample = monitor.sample()
        finally:
            monitor.close()
        assert set(HOST_SERIES[:2]) | set(BUDGET_SERIES) <= {name[len("target/a/"):] for name in sample}
        assert sample["target/a/budget/limit_bytes"] == 4 << 30
        assert sample["target/a/budget/in_flight_bytes"] == sample["target/a/budget/peak_bytes"] == 1 << 30
        assert sample["target/a/budget/granted"] == 1 and sample["target/a/budget/pressure"] == 0.0
        assert sample["target/a/monitor/sample_ms"] < 1000
        budget.release(lease)
    finally:
        budget.close()
    # A budget file that is not there: said once as an error, the host series are still sampled.
    missing = Monitor(_spec(budget_path=str(tmp_path / "absent")))
    sample = missing.sample()
    assert "host/mem_available_bytes" in sample and "budget/limit_bytes" not in sample
    assert any("absent" in error for error in missing.errors)
    missing.close()


@pytest.mark.timeout(30)
def test_the_gate_holds_a_real_budget_file_and_lets_it_go(tmp_path: Path) -> None:
    path = tmp_path / "budget"
    budget = HostBudget.create(str(path), 4 << 30)
    # A reserve larger than this host's memory: the real reading is "under pressure".
    holding = GateSettings(reserve_min_bytes=1e15, release_psi_some=100.5)
    monitor = Monitor(_spec(budget_path=str(path), pressure_gate=holding))
    try:
        sample = monitor.sample()
        assert sample["budget/pressure"] == 1.0 and budget.figures().pressure
        assert monitor.notes and monitor.notes[0].startswith("holding large requests: MemAvailable")
        assert budget.try_acquire(1 << 20, 60.0) is None  # every worker's next large request waits
        monitor.sample()
        assert monitor.notes == [] and budget.try_acquire(1 << 20, 60.0) is None
        # The host recovers (here: a reserve this host is far above): released, leases again.
        monitor.gate.settings = GateSettings(reserve_min_bytes=1.0, reserve_fraction=0.0, release_psi_some=100.5)
        sample = monitor.sample()
        assert sample["budget/pressure"] == 0.0 and not budget.figures().pressure
        assert monitor.notes and monitor.notes[0].startswith("releasing large requests")
        lease = budget.try_acquire(1 << 20, 60.0)
        assert lease is not None
        budget.release(lease)
        # Held again, then the monitor stops: it lets go, so nobody is held with nobody watching.
        monitor.gate.settings = holding
        monitor.sample()
        assert budget.figures().pressure
    finally:
        monitor.close()
    try:
        assert not budget.figures().pressure and budget.try_acquire(1 << 20, 60.0) is not None
    finally:
        budget.close()


@pytest.mark.timeout(60)
def test_the_monitor_loop_sends_the_hold_and_its_event_over_zeromq(tmp_path: Path) -> None:
    path = tmp_path / "budget"
    budget = HostBudget.create(str(path), 4 << 30)
    context = zmq.Context.instance()
    pull = context.socket(zmq.PULL)
    endpoint = f"ipc://{tmp_path}/monitor.sock"
    pull.bind(endpoint)
    stop = threading.Event()
    spec = _spec(budget_path=str(path), telemetry_endpoint=endpoint, deadline_s=20.0,
                 pressure_gate=GateSettings(reserve_min_bytes=1e15))
    loop = threading.Thread(target=run_monitor, args=(spec, stop))
    loop.start()
    try:
        resources, events = [], []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (resources and events):
            if pull.poll(200):
                message = unpack(pull.recv())
                if message.kind == KIND_RESOURCES:
                    resources.append(message.body["samples"])
                elif message.kind == KIND_EVENT and message.body["what"] == "memory_pressure":
                    events.append(message.body["text"])
        assert resources and resources[0]["budget/pressure"] == 1.0 and "host/mem_available_bytes" in resources[0]
        assert events and events[0].startswith("holding large requests")
        assert budget.figures().pressure
    finally:
        stop.set()
        loop.join(15)
        pull.close(0)
    try:
        assert not loop.is_alive() and not budget.figures().pressure  # released when the monitor ended
    finally:
        budget.close()


def _store_with_host_memory(run_dir: Path, psi: bool = True, budget: bool = True) -> None:
    store = RunStore.create(run_dir / "run.sqlite", run_dir.name, '{"config": {}}', "2026-11-25T00:00:00+00:00")
    h = LatencyHistogram()
    h.add(np.full(100, 2_000_000, np.int64))
    for i in range(60):
        store.add_windows([WindowStats(i * 5.0, 5.0, "identity_fp32", "large_input", "grpc", 100, 100, 0, 0, 0, 0,
                                       20.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, h.to_bytes())])
        held = 20 <= i < 30  # run seconds 100 to 150
        samples = {"host/mem_available_bytes": (10.0 - (3.0 if held else 0.0) - 0.01 * i) * GIB,
                   "host/mem_total_bytes": 16 * GIB, "proc/server/rss_anon": 100e6}
        if psi:
            samples["host/psi_memory_some_avg10"] = 25.0 if held else 0.5
            samples["host/psi_memory_full_avg10"] = 5.0 if held else 0.0
        if budget:
            samples.update({"budget/limit_bytes": 4 * GIB, "budget/in_flight_bytes": (0.0 if held else 2.0) * GIB,
                            "budget/peak_bytes": 3 * GIB, "budget/granted": float(i), "budget/waits": min(i, 3),
                            "budget/wait_s": min(i, 3) * 1.5, "budget/skipped": 1.0 if i > 25 else 0.0,
                            "budget/pressure": 1.0 if held else 0.0})
        store.add_resources(i * 5.0, samples)
    store.set_totals([("large_input", 60, 0, 6000)])
    store.set_status(LiveStatus(time_s=300.0, requests=6000, final=True, lost_messages=0))
    store.commit()
    store.close()


@pytest.mark.timeout(60)
def test_the_report_shows_the_host_memory_and_the_budget(tmp_path: Path) -> None:
    _store_with_host_memory(tmp_path)
    report = load_report(tmp_path)
    memory = report.host_memory
    assert memory is not None and memory.min_available_bytes == pytest.approx((10.0 - 3.0 - 0.29) * GIB)
    assert memory.max_psi_some_avg10 == 25.0 and memory.hold_s == pytest.approx(50.0)
    assert memory.budget is not None
    assert (memory.budget.limit_bytes, memory.budget.peak_bytes, memory.budget.granted, memory.budget.waits,
            memory.budget.wait_s, memory.budget.skipped) == (4 * GIB, 3 * GIB, 59, 3, 4.5, 1)
    assert ("large requests: 3 waited 4.5 s in total for the memory budget (limit 4.00 GiB, peak 3.00 GiB), "
            "1 skipped") in render_summary(report)
    write_reports(tmp_path, report, ("json", "html"))
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["schema_version"] == 1
    assert data["host_memory"] == {"min_available_bytes": memory.min_available_bytes, "max_psi_some_avg10": 25.0,
                                   "hold_s": 50.0, "budget": {"limit_bytes": 4 * GIB, "peak_bytes": 3 * GIB,
                                                              "granted": 59, "waits": 3, "wait_s": 4.5, "skipped": 1}}
    page = (tmp_path / "report.html").read_text()
    assert "<h2>Host memory</h2>" in page
    for title in ("host memory: MemAvailable (shaded", "host memory pressure: PSI (shaded",
                  "large-request budget: bytes in flight (shaded"):
        assert f'aria-label="{title}' in page
    assert page.count('class="span"') == 3  # the one hold, on each of the three charts
    assert "large requests held for memory pressure, 00:01:40 to 00:02:30" in page
    assert "reserve (hold below)" in page and "lowest MemAvailable 6.71 GiB" in page


@pytest.mark.timeout(60)
def test_the_report_without_psi_or_budget_or_host_series(tmp_path: Path) -> None:
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    _store_with_host_memory(quiet, psi=False, budget=False)
    report = load_report(quiet)
    assert report.host_memory is not None and report.host_memory.max_psi_some_avg10 is None
    assert report.host_memory.budget is None and report.host_memory.hold_s == 0.0
    assert "large requests:" not in render_summary(report)
    write_reports(quiet, report, ("json", "html"))
    assert json.loads((quiet / "report.json").read_text())["host_memory"]["max_psi_some_avg10"] is None
    page = (quiet / "report.html").read_text()
    assert "PSI) not measured" in page and 'aria-label="host memory: MemAvailable"' in page
    assert "large-request budget" not in page and 'class="span"' not in page
    # A store from before these series: no section at all.
    old = tmp_path / "old"
    old.mkdir()
    store = RunStore.create(old / "run.sqlite", "old", '{"config": {}}', "2026-11-25T00:00:00+00:00")
    store.add_resources(0.0, {"proc/server/rss_anon": 1e8})
    store.set_status(LiveStatus(time_s=5.0, final=True))
    store.commit()
    store.close()
    report = load_report(old)
    assert report.host_memory is None
    write_reports(old, report, ("json", "html"))
    assert json.loads((old / "report.json").read_text())["host_memory"] is None
    assert "Host memory" not in (old / "report.html").read_text()
    assert not [p for p in os.listdir("/dev/shm") if "pressuretest" in p]
