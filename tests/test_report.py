"""Reports rebuilt from a store: the JSON schema's promises, the text summary, and report.html as
a browser renders it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine.aggregator import LatencyHistogram
from engine.detectors.verdict import Verdict
from engine.live_status import LiveStatus
from engine.report import load_report, render_summary, write_reports
from engine.store import RunStore
from engine.window_stats import WindowStats


def _store(run_dir: Path, final: bool) -> None:
    store = RunStore.create(run_dir / "run.sqlite", run_dir.name, '{"config": {}}', "2026-11-25T00:00:00+00:00")
    rng = np.random.default_rng(1)
    for i in range(60):
        for model, base in (("identity_fp32", 2e6), ("leak_fp32", 3e6)):
            h = LatencyHistogram()
            h.add(rng.lognormal(np.log(base), 0.3, 100).astype(np.int64))
            store.add_windows([WindowStats(i * 5.0, 5.0, model, "identity", "grpc", 100, 99, 0, 1, 0, 0, 20.0,
                                           h.mean_ns / 1e6, h.percentile(50) / 1e6, h.percentile(90) / 1e6,
                                           h.percentile(95) / 1e6, h.percentile(99) / 1e6, h.max_ns / 1e6,
                                           h.to_bytes())])
        store.add_resources(i * 5.0, {"proc/server/rss_anon": 100e6, "proc/stub/leak_fp32_0_0/rss_anon": 20e6 + i * 1e6,
                                      "proc/stub/leak_fp32_0_0/fds": 30.0})
    store.add_verdict(Verdict("leak", "GROWTH", "stub/leak_fp32_0_0 (pid 7)", 60.0, 120.0, 687.0, "MiB/h", 600.0,
                              700.0, {"gate_mib_h": 64.0}))
    store.add_verdict(Verdict("wrong_answers", "WRONG", "leak_fp32 in identity over grpc", 0.0, 5.0, 1.0, "requests",
                              1.0, 1.0, {}, ("OUTPUT0 [1] != expected [0]",)))
    store.add_incident(100.0, "worker 1 exited with status -9; replaced")
    store.set_totals([("identity", 12000, 60, 12000)])
    store.set_status(LiveStatus(time_s=300.0, requests=12000, final=final, lost_messages=0))
    store.commit()
    store.close()


def test_report_from_a_store_says_what_happened(tmp_path: Path) -> None:
    _store(tmp_path, final=True)
    report = load_report(tmp_path)
    assert (report.verdict, report.exit_code, report.ended_normally) == ("FAIL", 1, True)
    assert [v.kind for v in report.verdicts if v.failing] == ["GROWTH", "WRONG"]
    identity = next(r for r in report.latency if r.model == "identity_fp32")
    assert identity.requests == 6000 and abs(identity.p50_ms - 2.0) < 0.1 and abs(identity.throughput - 20) < 1e-9
    leak = next(r for r in report.resources if r.series == "proc/stub/leak_fp32_0_0/rss_anon")
    assert (leak.first, leak.last) == (20e6, 79e6)
    text = render_summary(report)
    assert "TOTAL" in text and "incident [00:01:40]: worker 1 exited" in text and "verdict: FAIL" in text
    written = write_reports(tmp_path, report, ("json", "html", "text"))
    assert {p.name for p in written} == {"report.json", "report.html", "stress_report.txt"}
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["schema_version"] == 1 and data["verdicts"][1]["samples"] == ["OUTPUT0 [1] != expected [0]"]


def test_a_store_without_its_final_figures_is_a_run_that_did_not_end_normally(tmp_path: Path) -> None:
    _store(tmp_path, final=False)
    report = load_report(tmp_path)
    assert not report.ended_normally and report.verdict == "FAIL"
    assert "did not end normally" in render_summary(report)


def test_report_html_renders_in_a_browser(tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium) to render report.html")
    _store(tmp_path, final=True)
    write_reports(tmp_path, load_report(tmp_path), ("html",))
    page = (tmp_path / "report.html").read_text()
    assert page.count("<svg") >= 4  # throughput, two latency charts, memory, the leak's trend
    png = tmp_path / "report.png"
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1100,3000", f"--screenshot={png}", (tmp_path / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert png.exists(), done.stderr[-2000:]
    assert png.stat().st_size > 50_000  # tables and plots, not a blank page
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (tmp_path / "report.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "polyline" in dom and "stub/leak_fp32_0_0: RssAnon with the GROWTH trend" in dom


def test_every_leak_has_its_picture_and_the_resource_table_says_units(tmp_path: Path) -> None:
    """Issue 19: a leak of fds (4 -> 815) gets a chart of its series and floor, not only a table
    row; the resource table shows MiB, fds and CPU seconds, not raw bytes like 1.73e+07."""
    from engine.report import render_page
    from engine.report.html_page import count_series

    store = RunStore.create(tmp_path / "run.sqlite", tmp_path.name, '{"config": {}}', "2026-11-25T00:00:00+00:00")
    for i in range(120):
        store.add_resources(i * 5.0, {"proc/stub/fd_fp32_0_0/fds": 4.0 + i * 6.8,
                                      "proc/stub/fd_fp32_0_0/rss_anon": 17.3e6, "proc/server/cpu_s": i * 0.5})
        store.add_resources(i * 5.0, {"model/hang_fp32/pending": float(max(0, i - 40) * 30),
                                      "proc/server/rss_anon": 20e6 + max(0, i - 40) * 30 * 28e3})
    store.add_verdict(Verdict("leak", "LEAK", "stub/fd_fp32_0_0 (pid 9) fds", 100.0, 400.0, 4896.0, "fds/h",
                              4896.0, 4896.0, {"floor_first": 140.0, "floor_last": 548.0}))
    store.add_verdict(Verdict("leak", "BACKLOG", "server (pid 3): queue of hang_fp32", 200.0, 500.0, 600.0, "MiB/h",
                              500.0, 700.0, {"bytes_per_queued_request": 28000.0}), state="info")
    store.add_event(50.0, "aggregator", "client_bound", "", "", 1, "worker-0: 97 % of a core")
    store.add_event(80.0, "aggregator", "client_free", "", "", 1, "worker-0: no longer its own bottleneck")
    store.set_status(LiveStatus(time_s=600.0, requests=0, final=True))
    store.commit()
    store.close()
    page = render_page(tmp_path)
    assert "1 spans (30 s) where a worker was its own bottleneck" in page
    assert "stub/fd_fp32_0_0 (pid 9) fds: 4.9e+03 fds/h (LEAK; dashed: its floor)" in page
    assert "server (pid 3): queue of hang_fp32: requests waiting in the server (BACKLOG: 28,000 bytes each)" in page
    assert load_report(tmp_path).verdict == "FAIL"  # the fd leak; the BACKLOG alone explains, it fails nothing
    assert "<td>fds</td><td class=\"n\">4</td><td class=\"n\">813</td>" in page
    assert "<td>MiB</td><td class=\"n\">16.5</td>" in page and "1.73e+07" not in page
    assert count_series("the run's /dev/shm files on a") == "target/a/shm/files"
    assert count_series("stub/m_0_0 on b (pid 3) threads") == "target/b/proc/stub/m_0_0/threads"
