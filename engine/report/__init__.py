"""Reports of a run, rebuilt from its store: `build_report`, `render_summary`, `write_reports`."""

from __future__ import annotations

from pathlib import Path

from engine.store import RunStore

from .build import SCHEMA_VERSION, RunReport, build_report, load_report
from .html_page import render_html
from .text import render_summary, scenario_table


def render_page(run_dir: Path) -> str:
    """report.html's text for a run directory, from its store."""
    store = RunStore.open(Path(run_dir) / "run.sqlite")
    try:
        return render_html(build_report(store), store)
    finally:
        store.close()


def write_reports(run_dir: Path, report: RunReport, formats: tuple[str, ...]) -> list[Path]:
    """The files of `formats` ("json": report.json, "html": report.html, "text": stress_report.txt,
    the reference's table); "terminal" is the caller's print. Returns what was written."""
    written = []
    if "html" in formats:
        path = Path(run_dir) / "report.html"
        store = RunStore.open(Path(run_dir) / "run.sqlite")
        try:
            path.write_text(render_html(report, store))
        finally:
            store.close()
        written.append(path)
    if "json" in formats:
        path = Path(run_dir) / "report.json"
        path.write_bytes(report.to_json())
        written.append(path)
    if "text" in formats:
        path = Path(run_dir) / "stress_report.txt"
        path.write_text(scenario_table(report))
        written.append(path)
    return written


__all__ = ["SCHEMA_VERSION", "RunReport", "build_report", "load_report", "render_html", "render_page", "render_summary",
           "scenario_table", "write_reports"]
