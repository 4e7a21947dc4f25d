"""A sweep's results as files and text: the JSON document (the baseline format too), perf_analyzer's
CSV, and the terminal table. PERF.md documents both file formats."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from .plan import CLOSED, OPEN, PointSpec
from .results import PointResult

SCHEMA = "triton-endurance-perf"
SCHEMA_VERSION = 1
JSON_NAME, CSV_NAME, RATE_CSV_NAME = "perf.json", "perf.csv", "perf_request_rate.csv"

# perf_analyzer's columns, in its order (times in microseconds, as it writes them). The first one
# is "Concurrency" in perf.csv and "Request Rate" in perf_request_rate.csv.
PA_COLUMNS = ("Inferences/Second", "Client Send", "Network+Server Send/Recv", "Server Queue",
              "Server Compute Input", "Server Compute Infer", "Server Compute Output", "Client Recv",
              "p50 latency", "p90 latency", "p95 latency", "p99 latency", "Avg latency")
EXTRA_COLUMNS = ("Model", "Protocol", "Shared Memory", "Batch Size", "Input Elements", "Requests/Second",
                 "Request Count", "Error Count", "Status", "Windows")


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no infinity: an unknown spread is null


def point_to_dict(result: PointResult) -> dict[str, Any]:
    spec, counts = result.spec, result.counts
    doc: dict[str, Any] = {
        "key": spec.key, "model": spec.model, "protocol": spec.protocol, "shm": spec.shm,
        "batch_size": spec.batch_size, "input_elements": spec.input_elements, "load": spec.load,
        "level": int(spec.level) if spec.load == CLOSED else spec.level,
        "status": result.status, "reason": result.reason, "elapsed_s": round(result.elapsed_s, 3),
        "requests": {
            "check": counts.check, "warmup": counts.warmup, "measured": counts.measured, "counted": counts.counted,
            "drained": counts.drained, "answered": counts.answered, "errors": counts.errors,
            "errors_total": counts.errors_total, "skipped": counts.skipped, "server_success": counts.server_success,
        },
        "error_samples": [{"text": text, "count": n} for text, n in result.error_samples],
    }
    if not result.measured or result.latency is None:
        return doc
    lat = result.latency
    server = result.server
    doc.update({
        "throughput_infer_per_s": result.throughput,
        "throughput_requests_per_s": result.request_rate,
        "latency_us": {"avg": lat.avg_us, "p50": lat.p50_us, "p90": lat.p90_us, "p95": lat.p95_us,
                       "p99": lat.p99_us, "max": lat.max_us},
        "client_us": {"send": result.client_send_us, "recv": result.client_recv_us, "cpu": result.client_cpu_us},
        "network_server_us": result.network_server_us,
        "server_us": None if server is None else {
            "queue": server.queue_us, "compute_input": server.compute_input_us,
            "compute_infer": server.compute_infer_us, "compute_output": server.compute_output_us},
        "server_requests": None if server is None else {
            "success": server.success, "failed": server.failed, "inferences": server.inferences,
            "executions": server.executions},
        "reported_windows": result.reported_windows,
        "spread": {"throughput": _finite(result.throughput_spread), "p99": _finite(result.p99_spread)},
        "windows": [{"duration_s": w.duration_s, "requests": w.requests, "errors": w.errors,
                     "throughput_infer_per_s": w.throughput, "avg_us": w.avg_us, "p50_us": w.p50_us,
                     "p99_us": w.p99_us} for w in result.windows],
        "schedule": None if result.spec.load != OPEN else {
            "lateness_avg_us": result.lateness_avg_us, "lateness_max_us": result.lateness_max_us,
            "skipped": counts.skipped},
    })
    return doc


def build_document(run: dict[str, Any], results: Sequence[PointResult]) -> dict[str, Any]:
    """The whole JSON document: `run` carries run_id, times, host, server, settings and models."""
    return {"schema": SCHEMA, "version": SCHEMA_VERSION, **run, "points": [point_to_dict(r) for r in results]}


def _atomic_write(path: Path, data: bytes) -> None:
    # Written after every point: a reader (or a crash) never sees half a file.
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def write_json(path: Path, document: dict[str, Any]) -> None:
    _atomic_write(path, orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")


def csv_rows(results: Sequence[PointResult], load: str) -> list[list[str]]:
    """perf_analyzer's CSV for the measured points of one load kind (header first)."""
    header = ["Concurrency" if load == CLOSED else "Request Rate", *PA_COLUMNS, *EXTRA_COLUMNS]
    rows = [header]
    for r in results:
        if r.spec.load != load or not r.measured or r.latency is None:
            continue
        s, lat, server = r.spec, r.latency, r.server
        level = str(int(s.level)) if load == CLOSED else f"{s.level:g}"
        us = [r.client_send_us, r.network_server_us,
              *((server.queue_us, server.compute_input_us, server.compute_infer_us, server.compute_output_us)
                if server else (0.0, 0.0, 0.0, 0.0)),
              r.client_recv_us, lat.p50_us, lat.p90_us, lat.p95_us, lat.p99_us, lat.avg_us]
        rows.append([level, f"{r.throughput:.2f}", *(str(round(v)) for v in us),
                     s.model, s.protocol, s.shm, str(s.batch_size), str(s.input_elements), f"{r.request_rate:.2f}",
                     str(r.counts.counted), str(r.counts.errors), r.status, str(r.reported_windows)])
    return rows


def write_csvs(directory: Path, results: Sequence[PointResult]) -> list[Path]:
    written = []
    for load, name in ((CLOSED, CSV_NAME), (OPEN, RATE_CSV_NAME)):
        if not any(r.spec.load == load for r in results):
            continue
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(csv_rows(results, load))
        _atomic_write(directory / name, text.getvalue().encode())
        written.append(directory / name)
    return written


def write_outputs(directory: Path, document: dict[str, Any], results: Sequence[PointResult]) -> list[Path]:
    write_json(directory / JSON_NAME, document)
    return [directory / JSON_NAME, *write_csvs(directory, results)]


def _us(value: float) -> str:
    return f"{value:,.0f}"


def point_line(index: int, total: int, result: PointResult) -> str:
    """One progress line, printed as each point ends."""
    s = result.spec
    head = f"[{index}/{total}] {s.model} {s.protocol} shm={s.shm} batch={s.batch_size} {s.load_label}"
    if result.measured and result.latency is not None:
        lat = result.latency
        extra = f", {result.counts.errors} errors" if result.counts.errors else ""
        return (f"{head}: {result.throughput:,.1f} infer/s, p50 {_us(lat.p50_us)} us, p99 {_us(lat.p99_us)} us, "
                f"{len(result.windows)} windows, {result.status}{extra} ({result.elapsed_s:.1f} s)")
    return f"{head}: {result.status.upper()}: {result.reason}"


def render_table(results: Sequence[PointResult]) -> str:
    """The terminal table: every point, measured or not, then the notes that explain the rest."""
    header = ("model", "proto", "shm", "batch", "load", "infer/s", "p50", "p90", "p95", "p99", "avg",
              "queue", "infer", "cpu", "errors", "windows", "status")
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    not_measured: dict[str, list[str]] = {}  # "skipped: reason" -> keys (one note for many points)
    for r in results:
        s = r.spec
        base = (s.model, s.protocol, s.shm, str(s.batch_size), _short_load(s))
        if r.measured and r.latency is not None:
            lat, server = r.latency, r.server
            rows.append((*base, f"{r.throughput:,.1f}", _us(lat.p50_us), _us(lat.p90_us), _us(lat.p95_us),
                         _us(lat.p99_us), _us(lat.avg_us), _us(server.queue_us) if server else "-",
                         _us(server.compute_infer_us) if server else "-", _us(r.client_cpu_us),
                         str(r.counts.errors), f"{len(r.windows)}", r.status))
            if r.status != "stable" or r.counts.errors:
                notes.append(f"{s.key}: {r.reason or r.status}" +
                             (f"; errors: {r.error_samples[0][0]}" if r.error_samples else ""))
        else:
            rows.append((*base, *("-",) * 11, r.status))
            not_measured.setdefault(f"{r.status}: {r.reason}", []).append(s.key)
    for text, keys in not_measured.items():
        notes.append(f"{keys[0]}: {text}" if len(keys) == 1 else f"{len(keys)} points ({keys[0]}, ...): {text}")
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    left = {0, 1, 2, 4, len(header) - 1}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]
    out.append("latencies (client side), server queue and compute infer per request, and the client's CPU per "
               "request (cpu), in microseconds")
    out.extend(f"  note: {n}" for n in notes)
    return "\n".join(out) + "\n"


def _short_load(spec: PointSpec) -> str:
    return f"c={int(spec.level)}" if spec.load == CLOSED else f"r={spec.level:g}/s"


def status_counts(results: Sequence[PointResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts

