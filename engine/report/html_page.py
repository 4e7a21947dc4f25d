"""report.html: one self-contained page (inline CSS and SVG, no script, nothing fetched) with the
reference table, verdicts, incidents, latency per model, and plots over time: latency p50/p99 and
throughput per model, memory per process with the trend of any leak verdict, verdicts as markers, and
the host's memory: MemAvailable, PSI, the large-request budget, with the pressure hold shaded."""

from __future__ import annotations

import collections
import html
from collections.abc import Sequence

import numpy as np

from engine.aggregator.client_health import BOUND, FREE
from engine.monitor.pressure import GateSettings
from engine.series_names import (
    MEM_AVAILABLE,
    MEM_TOTAL,
    PENDING,
    PSI_FULL_AVG10,
    PSI_SOME_AVG10,
    budget_series,
    field_of,
    is_process_series,
    model_series,
    process_of,
    process_series,
    shm_series,
    split_process,
    split_target,
    target_prefix,
)
from engine.store import RunStore

from .build import ResourceSummary, RunReport, answer_check_line, hold_spans, host_series
from .stress_report import hhmmss
from .svg import Chart, Line, render_chart

MIB = float(1 << 20)
GIB = float(1 << 30)
HOUR = 3600.0

_CSS = """
body { font: 14px/1.4 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; } td, th { border: 1px solid #ddd; padding: 3px 8px; }
th { background: #f4f4f4; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.PASS { color: #fff; background: #2a7d2a; padding: 2px 10px; border-radius: 4px; }
.FAIL { color: #fff; background: #b02020; padding: 2px 10px; border-radius: 4px; }
.note { color: #8a5a00; } svg { display: block; margin: 10px 0; }
svg .title { font-size: 13px; font-weight: 600; } svg .frame { fill: none; stroke: #999; }
svg .grid { stroke: #eee; } svg .ytick { font-size: 11px; text-anchor: end; fill: #555; }
svg .xtick { font-size: 11px; text-anchor: middle; fill: #555; } svg .ylabel { font-size: 11px; fill: #555; }
svg .legend { font-size: 11px; fill: #333; } svg .marker { stroke: #b02020; stroke-dasharray: 3 3; }
svg .span { fill: #ff7f0e; fill-opacity: 0.18; }
"""


def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            numeric = isinstance(cell, (int, float)) and not isinstance(cell, bool)
            text = f"{cell:.3g}" if isinstance(cell, float) else str(cell)
            cells.append(f'<td class="n">{text}</td>' if numeric else f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def client_bound_spans(store: RunStore, end_s: float) -> list[tuple[float, float, str]]:
    """The spans where a worker was its own bottleneck (its BOUND and FREE events, per worker; one
    still open at the end runs to `end_s`), as shaded spans of a chart."""
    spans, open_at = [], {}
    for event in store.events():
        worker = event.text.split(":", 1)[0]
        if event.what == BOUND:
            open_at.setdefault(worker, (event.time_s, event.text))
        elif event.what == FREE and worker in open_at:
            start, why = open_at.pop(worker)
            spans.append((start, event.time_s, f"the engine was its own bottleneck: {why}"))
    spans += [(start, end_s, f"the engine was its own bottleneck: {why}") for start, why in open_at.values()]
    return sorted(spans)


def _latency_charts(store: RunStore, markers: list[tuple[float, str]],
                    spans: Sequence[tuple[float, float, str]] = ()) -> list[str]:
    by_key = collections.defaultdict(list)
    for w in store.windows():
        if w.ok + w.wrong:
            by_key[(w.model, w.scenario, w.protocol)].append(w)
    # Each model's busiest (scenario, protocol): one latency chart per model stays readable.
    busiest: dict[str, tuple[str, str, str]] = {}
    for key, windows in by_key.items():
        if key[0] not in busiest or len(windows) > len(by_key[busiest[key[0]]]):
            busiest[key[0]] = key
    charts = []
    for model in sorted(busiest):
        windows = by_key[busiest[model]]
        t = np.array([w.start_s for w in windows])
        charts.append(render_chart(Chart(
            f"{model}: latency ({busiest[model][1]}, {busiest[model][2]})", "ms",
            [Line("p50", t, np.array([w.p50_ms for w in windows])),
             Line("p99", t, np.array([w.p99_ms for w in windows]))],
            markers, spans)))
    per_model = collections.defaultdict(lambda: collections.Counter())
    lengths = {}
    for key, windows in by_key.items():
        for w in windows:
            per_model[key[0]][w.start_s] += w.requests
            lengths[key[0]] = w.length_s
    throughput = [Line(model, np.array(sorted(counts)), np.array([counts[s] for s in sorted(counts)]) / lengths[model])
                  for model, counts in sorted(per_model.items())]
    charts.insert(0, render_chart(Chart("throughput per model", "requests/s", throughput, markers)))
    return charts


def _memory_charts(store: RunStore, report: RunReport, markers: list[tuple[float, str]]) -> list[str]:
    names = [n for n in store.series_names() if is_process_series(n) and field_of(n) == "rss_anon"]
    lines = []
    leaks = {v.subject.split(" (pid", 1)[0]: v for v in report.verdicts
             if v.detector == "leak" and v.unit == "MiB/h" and v.kind in ("GROWTH", "LEAK")}
    charts = []
    for name in names:
        t, v = store.series(name)
        process = process_of(name)
        lines.append(Line(process, t, v / MIB))
        verdict = leaks.get(process)
        if verdict is not None and len(t):
            # The verdict's own slope, drawn from where its evidence starts.
            start = verdict.since_s
            after = t >= start
            # The line's level: the median intercept at `start` of the points under the slope.
            level = float(np.median(v[after] / MIB - verdict.size * (t[after] - start) / HOUR)) if after.any() else 0.0
            span = np.array([start, float(t[-1])])
            trend = level + verdict.size * (span - start) / HOUR
            charts.append(render_chart(Chart(f"{process}: RssAnon with the {verdict.kind} trend ({verdict.size:.3g} "
                                             "MiB/h)", "MiB", [Line(process, t, v / MIB),
                                                               Line("trend", span, trend, dashed=True)], markers)))
    for v in report.verdicts:
        if v.kind == "BACKLOG" and ": queue of " in v.subject:
            # The queue beside the memory it holds: the model's pending requests over the run.
            process, model = v.subject.split(": queue of ", 1)
            target = split_process(process.split(" (pid", 1)[0])[1]
            series = target_prefix(target) + model_series(model, PENDING)
            t, queued = store.series(series) if series in store.series_names() else (np.empty(0), np.empty(0))
            if len(t):
                charts.append(render_chart(Chart(f"{v.subject}: requests waiting in the server (BACKLOG: "
                                                 f"{v.evidence.get('bytes_per_queued_request', 0):,.0f} bytes each)",
                                                 "requests", [Line(model, t, queued)], markers)))
    charts.insert(0, render_chart(Chart("RssAnon per process (heap; registered shm is RssShmem, not a leak)", "MiB",
                                        lines, markers)))
    return charts


# A resource series' last name part -> (unit, divisor): the table says MiB, fds, threads, seconds.
_UNITS = {"rss_anon": ("MiB", MIB), "rss_shmem": ("MiB", MIB), "rss_file": ("MiB", MIB), "pss": ("MiB", MIB),
          "bytes": ("MiB", MIB), "gpu_bytes": ("MiB", MIB), "fds": ("fds", 1.0), "threads": ("threads", 1.0),
          "files": ("files", 1.0), "cpu_s": ("CPU s", 1.0)}


def _in_units(r: ResourceSummary) -> list[object]:
    """[unit, first, last, min, max] of a resource row, in the unit a reader thinks in."""
    unit, scale = _UNITS.get(r.series.rsplit("/", 1)[-1], ("", 1.0))
    values = [v / scale for v in (r.first, r.last, r.min, r.max)]
    if scale == 1.0 and unit != "CPU s":
        return [unit, *(int(round(v)) for v in values)]  # counts are whole numbers
    return [unit, *(round(v, 1) for v in values)]


def _count_charts(store: RunStore, report: RunReport, markers: list[tuple[float, str]]) -> list[str]:
    """A chart for each leak of a countable resource (fds, threads, /dev/shm files or bytes): the
    series, and its floor from the first bin the verdict read to the last, dashed."""
    charts = []
    for v in report.verdicts:
        if v.detector != "leak" or v.unit == "MiB/h" or v.kind != "LEAK":
            continue
        series = count_series(v.subject)
        if series is None or series not in store.series_names():
            continue
        t, values = store.series(series)
        if not len(t):
            continue
        unit, scale = _UNITS.get(series.rsplit("/", 1)[-1], ("", 1.0))
        lines = [Line(series, t, values / scale)]
        first, last = v.evidence.get("floor_first"), v.evidence.get("floor_last")
        if first is not None and last is not None:
            lines.append(Line("floor", np.array([v.since_s, v.at_s]), np.array([first, last]) / scale, dashed=True))
        charts.append(render_chart(Chart(f"{v.subject}: {v.size:.3g} {v.unit} (LEAK; dashed: its floor)", unit,
                                         lines, markers)))
    return charts


def count_series(subject: str) -> str | None:
    """The stored series a countable-resource verdict is about: 'stub/m_0_0 (pid 7) fds' ->
    'proc/stub/m_0_0/fds'; "the run's /dev/shm files" -> 'shm/files' (a fleet's: target/<server>/...)."""
    if subject.startswith("the run's /dev/shm "):
        rest = subject[len("the run's /dev/shm "):]
        field, _, target = rest.partition(" on ")
        return target_prefix(target) + shm_series(field)
    process, _, field = subject.rpartition(" ")
    process = process.split(" (pid", 1)[0]
    if not process or field not in _UNITS:
        return None
    name, target = split_process(process)
    return process_series(name, field, target)


def _host_memory(store: RunStore, report: RunReport, markers: list[tuple[float, str]]) -> list[str]:
    """MemAvailable, PSI and the large-request budget over the run, the pressure hold shaded."""
    memory = report.host_memory
    if memory is None:
        return []
    held = host_series(store, budget_series("pressure"))
    spans = [(a, b, f"large requests held for memory pressure, {hhmmss(a)} to {hhmmss(b)}")
             for a, b in (hold_spans(*store.series(held[0])) if held else [])]
    shaded = " (shaded: large requests held for memory pressure)" if spans else ""

    def lines(plain: str, label: str, scale: float = 1.0) -> list[Line]:
        out = []
        for name in host_series(store, plain):
            target = split_target(name)[0]
            t, v = store.series(name)
            out.append(Line(f"{label} on {target}" if target else label, t, v / scale))
        return out

    available = lines(MEM_AVAILABLE, "MemAvailable", GIB)
    if held:  # the gate's reserve: hold below it, release above 1.5 x it
        settings = GateSettings()
        for name in host_series(store, MEM_TOTAL)[:1]:
            t, total = store.series(name)
            reserve = np.array([settings.reserve_bytes(x) for x in total]) / GIB
            available.append(Line("reserve (hold below)", t, reserve, dashed=True))
    charts = [render_chart(Chart(f"host memory: MemAvailable{shaded}", "GiB", available, markers, spans))]
    psi = lines(PSI_SOME_AVG10, "some avg10") + lines(PSI_FULL_AVG10, "full avg10")
    charts.append(render_chart(Chart(f"host memory pressure: PSI{shaded}", "% of time stalled", psi, markers, spans))
                  if psi else "<p>Memory pressure (PSI) not measured: the kernel has no /proc/pressure/memory.</p>")
    if memory.budget is not None:
        budget = lines(budget_series("in_flight_bytes"), "in flight", GIB) + [
            Line("limit", ln.x, ln.y, dashed=True) for ln in lines(budget_series("limit_bytes"), "limit", GIB)[:1]]
        charts.append(render_chart(Chart(f"large-request budget: bytes in flight{shaded}", "GiB", budget, markers,
                                         spans)))
    figures = []
    if memory.min_available_bytes is not None:
        figures.append(f"lowest MemAvailable {memory.min_available_bytes / GIB:.2f} GiB")
    if memory.max_psi_some_avg10 is not None:
        figures.append(f"highest PSI some avg10 {memory.max_psi_some_avg10:.1f} %")
    b = memory.budget
    if b is not None:
        figures.append(f"large requests held for memory pressure {memory.hold_s:.0f} s")
        figures.append(f"budget: limit {b.limit_bytes / GIB:.2f} GiB, peak in flight {b.peak_bytes / GIB:.2f} GiB, "
                       f"{b.granted} granted, {b.waits} waited {b.wait_s:.1f} s in total, {b.skipped} skipped")
    return [f"<p>{html.escape('; '.join(figures))}.</p>"] + charts


def render_html(report: RunReport, store: RunStore) -> str:
    markers = [(v.at_s, v.text) for v in report.verdicts if v.failing]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Run {html.escape(report.run_id)}"
             f"</title><style>{_CSS}</style></head><body>",
             f"<h1>Run {html.escape(report.run_id)} <span class='{report.verdict}'>{report.verdict}</span></h1>",
             f"<p>Started {html.escape(report.started)}; {hhmmss(report.duration_s)} of load recorded.</p>"]
    if not report.ended_normally:
        parts.append("<p class='note'>The run did not end normally: this report holds what was committed.</p>")
    checked = answer_check_line(report.figures)
    if checked:
        parts.append(f"<p>{html.escape(checked)}.</p>")
    parts.append("<h2>Scenarios</h2>")
    rows = [[s.scenario, s.failed, s.plans, s.requests, s.description] for s in report.scenarios]
    rows.append(["TOTAL", sum(s.failed for s in report.scenarios), sum(s.plans for s in report.scenarios),
                 sum(s.requests for s in report.scenarios), ""])
    parts.append(_table(["Test Case", "Number of Failures", "Test Count", "Request Count", "Test Case Description"],
                        rows))
    parts.append("<h2>Verdicts</h2>")
    parts.append(_table(["state", "detector", "kind", "subject", "size", "unit", "since", "raised at"],
                        [[v.state, v.detector, v.kind, v.subject, v.size, v.unit, hhmmss(v.since_s), hhmmss(v.at_s)]
                         for v in report.verdicts]) if report.verdicts else "<p>None.</p>")
    if report.incidents:
        parts.append("<h2>Incidents</h2><ul>" + "".join(
            f"<li>{hhmmss(at)} {html.escape(what)}</li>" for at, what in report.incidents) + "</ul>")
    parts.append("<h2>Latency per model, scenario and protocol</h2>")
    parts.append(_table(["model", "scenario", "protocol", "requests", "failed", "wrong", "req/s", "p50 ms", "p90 ms",
                         "p99 ms", "max ms"],
                        [[r.model, r.scenario, r.protocol, r.requests, r.errors + r.missing_errors, r.wrong,
                          r.throughput, r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms] for r in report.latency]))
    if len(report.servers) > 1:
        parts.append("<h2>Servers</h2>")
        parts.append(_table(["server", "url", "host", "weight", "requests", "failed", "wrong", "req/s", "p50 ms",
                             "p99 ms", "max ms", "verdicts"],
                            [[s.name, s.url, s.host, s.weight, s.requests, s.errors + s.missing_errors, s.wrong,
                              s.throughput, s.p50_ms, s.p99_ms, s.max_ms, len(s.verdicts)] for s in report.servers]))
        for s in report.servers:
            parts.append(f"<h3>{html.escape(s.name)}: latency per model, scenario and protocol</h3>")
            parts.append(_table(["model", "scenario", "protocol", "requests", "failed", "wrong", "req/s", "p50 ms",
                                 "p99 ms", "max ms"],
                                [[r.model, r.scenario, r.protocol, r.requests, r.errors + r.missing_errors, r.wrong,
                                  r.throughput, r.p50_ms, r.p99_ms, r.max_ms] for r in s.latency]))
    parts.append("<h2>Over time</h2>")
    spans = client_bound_spans(store, report.duration_s)
    if spans:
        parts.append(f"<p>Shaded on the latency charts: {len(spans)} spans ({sum(b - a for a, b, _ in spans):.0f} s) "
                     "where a worker was its own bottleneck (a core's worth of CPU, a late event loop or a late "
                     "schedule); drift is not judged on windows that overlap them.</p>")
    parts += _latency_charts(store, markers, spans)
    parts.append("<h2>Resources</h2>")
    parts += _memory_charts(store, report, markers)
    parts += _count_charts(store, report, markers)
    parts.append(_table(["series", "unit", "first", "last", "min", "max"],
                        [[r.series, *_in_units(r)] for r in report.resources]))
    if report.host_memory is not None:
        parts.append("<h2>Host memory</h2>")
        parts += _host_memory(store, report, markers)
    parts.append("</body></html>")
    return "\n".join(parts)
