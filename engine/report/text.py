"""The report as text: the reference suite's table, then verdicts, incidents and per-model
latency; what the terminal shows at the end of a run and what `report RUN_DIR` prints."""

from __future__ import annotations

from .build import RunReport, answer_check_line
from .stress_report import ScenarioTotals, hhmmss, render_table

GIB = float(1 << 30)


def scenario_table(report: RunReport) -> str:
    return render_table([ScenarioTotals(s.scenario, s.plans, s.failed, s.requests) for s in report.scenarios],
                        report.duration_s)


def render_summary(report: RunReport) -> str:
    lines = [scenario_table(report).rstrip("\n")]
    if not report.ended_normally:
        lines.append(f"note: the run did not end normally; this report holds what was committed up to "
                     f"{hhmmss(report.duration_s)} of the run")
    for key, text in sorted(report.first_texts.items()):
        if key.startswith("scenario_failed"):
            lines.append(f"{key} (first: {text[:300]})")
    if report.latency:
        lines.append("")
        lines.append(f"{'model':<24} {'scenario':<22} {'proto':<11} {'requests':>9} {'fail':>5} {'wrong':>5} "
                     f"{'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for r in report.latency:
            lines.append(f"{r.model:<24} {r.scenario:<22} {r.protocol:<11} {r.requests:>9} "
                         f"{r.errors + r.missing_errors:>5} {r.wrong:>5} {r.throughput:>8.1f} {r.p50_ms:>8.2f} "
                         f"{r.p99_ms:>8.2f} {r.max_ms:>8.1f}")
    if len(report.servers) > 1:
        lines.append("")
        lines.append(f"{'server':<24} {'host':<16} {'weight':>6} {'requests':>9} {'fail':>5} {'wrong':>5} "
                     f"{'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'verdicts':>8}")
        for s in report.servers:
            lines.append(f"{s.name:<24} {s.host:<16} {s.weight:>6g} {s.requests:>9} {s.errors + s.missing_errors:>5} "
                         f"{s.wrong:>5} {s.throughput:>8.1f} {s.p50_ms:>8.2f} {s.p99_ms:>8.2f} {len(s.verdicts):>8}")
    lines.append("")
    for at, what in report.incidents:
        lines.append(f"incident [{hhmmss(at)}]: {what}")
    for v in report.verdicts:
        lines.append(f"{'verdict' if v.failing else 'note'} [{v.state}]: {v.text}")
    lost = report.figures.get("lost_messages", 0)
    if lost:
        lines.append(f"telemetry: {lost} messages lost")
    checked = answer_check_line(report.figures)
    if checked:
        lines.append(checked)
    held = report.figures.get("client_bound_windows", 0)
    if held:
        lines.append(f"load generator: drift not judged on {held} windows where a worker was its own bottleneck "
                     "(shaded in report.html)")
    budget = report.host_memory.budget if report.host_memory is not None else None
    if budget is not None and (budget.waits or budget.skipped):
        lines.append(f"large requests: {budget.waits} waited {budget.wait_s:.1f} s in total for the memory budget "
                     f"(limit {budget.limit_bytes / GIB:.2f} GiB, peak {budget.peak_bytes / GIB:.2f} GiB), "
                     f"{budget.skipped} skipped")
    failing = sum(v.failing for v in report.verdicts)
    failed = sum(s.failed for s in report.scenarios)
    lines.append(f"verdict: {report.verdict}; {failing} failing verdicts, {failed} failed scenarios, "
                 f"{len(report.incidents)} incidents")
    return "\n".join(lines) + "\n"
