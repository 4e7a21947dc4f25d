"""What every benchmark shares: the embedded server, CPU accounting, and the result format.

A benchmark module exposes `run(args) -> BenchResult` (and a `main()` for running it alone); the
result carries the table it measured and the targets it checks, so `tools/bench/run_all.py` can
write BENCHMARKS.md and a JSON file from the same figures it prints.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from a checkout: the engine's packages are here
    sys.path.insert(0, str(ROOT))

from engine.server import LaunchedServer, LaunchOptions  # noqa: E402
from model_repo_gen import ModelSpec, RepoOptions, generate_repository  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    """One target of the issue: what it asks, what was measured, whether it is met."""

    name: str
    goal: str  # in words, e.g. "<= 0.5x plain sync tritonclient"
    measured: str  # the figure, in words, e.g. "0.31x (81 us vs 262 us)"
    met: bool


@dataclass
class BenchResult:
    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]]
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0  # how long the benchmark took
    measured: str = ""  # "" = in this run; else when and at which commit (a figure kept from an earlier run)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """A Markdown table (also readable in a terminal)."""
        cells = [[_cell(value) for value in row] for row in self.rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(self.columns)]
        line = "| " + " | ".join(c.ljust(w) for c, w in zip(self.columns, widths)) + " |"
        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        body = ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |" for row in cells]
        return "\n".join([line, rule, *body])

    def report(self) -> str:
        lines = [f"## {self.title}", "", self.table(), ""]
        for target in self.targets:
            lines.append(f"- {'met' if target.met else 'MISSED'}: {target.name}: {target.goal}; "
                         f"measured {target.measured}")
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def own_cpu_seconds() -> float:
    """CPU time of this process, all its threads (gRPC's own threads included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int) -> float:
    """CPU time of another process, from /proc (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (a server and its python backend stubs)."""
    total = 0.0
    for child in [pid, *child_pids(pid)]:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # gone between listing and reading
            total += cpu_seconds(child)
    return total


def child_pids(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with suppress(FileNotFoundError):
            children += [int(x) for x in task.read_text().split()]
    return children


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class ServerHandle:
    grpc_url: str
    http_url: str
    metrics_url: str
    pid: int
    models: tuple[ModelSpec, ...]


@contextmanager
def embedded_server(workdir: Path, models: tuple[str, ...], instance_count: int = 1,
                    dynamic_batching: bool = True) -> Iterator[ServerHandle]:
    """The bundled tritonserver on free loopback ports serving generated `models`; stopped on exit."""
    specs = generate_repository(workdir / "repo", RepoOptions(models=models, instance_count=instance_count,
                                                              dynamic_batching=dynamic_batching))
    server = LaunchedServer(LaunchOptions(repository=workdir / "repo", work_dir=workdir / "server",
                                          startup_timeout=120.0, stop_timeout=15.0))
    try:
        server.start()
        endpoints = server.endpoints
        yield ServerHandle(endpoints.grpc, endpoints.http, endpoints.metrics, server.pid, tuple(specs))
    finally:
        server.stop()


def server_successes(http_url: str, model: str) -> int:
    """The server's own count of successful requests of `model` (all versions), from its statistics."""
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=10) as answer:
        stats = orjson.loads(answer.read())["model_stats"]
    return sum(int(entry["inference_stats"]["success"]["count"]) for entry in stats)


class NoTelemetry:
    """A telemetry sender that drops everything: the worker's path without the cost of telemetry."""

    records_sent = records_dropped = 0

    def record(self, *args: Any) -> None:
        pass

    def maybe_flush(self, *args: Any) -> None:
        pass

    flush = flush_events = close = maybe_flush
    event = heartbeat = record


def run_alone(doc: str | None, add_arguments: Callable[[argparse.ArgumentParser], None],
              run: Callable[[argparse.Namespace], BenchResult]) -> None:
    """A benchmark's own command line: its options, its run, its report printed."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    print(run(parser.parse_args()).report())


class Stopwatch:
    """Wall and CPU time of this process over a block."""

    def __enter__(self) -> Stopwatch:
        self.wall0, self.cpu0 = time.perf_counter(), own_cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = own_cpu_seconds() - self.cpu0
