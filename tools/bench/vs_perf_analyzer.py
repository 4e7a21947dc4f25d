"""The engine beside perf_analyzer 2.51 (the C++ client users pick for speed), on one embedded
server, the same model and the same requests, in one invocation (issue 18).

Every case runs as its own program, as a user runs it: perf_analyzer from its side venv
(tools/bench/perf_analyzer_env.py), the engine as `python -m engine` (the whole engine: coordinator,
aggregator, monitor, workers) or `python -m engine perf`, each attached to the benchmark's server.
Each is measured the same way in its steady state, start-up excluded: once the server has counted
its first requests and `--settle` seconds more have passed, the CPU time of the program's whole
process tree (from /proc, every thread of every process) and the server's count of successful
requests are read, and again `--seconds` later. Client CPU per request = CPU over that window /
requests the server counted in it; throughput = those requests / the window. Then the program is
stopped (SIGINT, as a user would) and anything perf_analyzer left in /dev/shm is removed and said.
`--rounds` rounds run interleaved (a slow minute of a shared host hits every case alike); medians
are reported.

The cases (the table of issue 18; identity_fp32 is the generated identity model):
- identity 1x16 FP32 over gRPC, 16 and 1 in flight: perf_analyzer `--shape INPUT0:16`; the engine
  drives a `[[load]]` entry of 16 random floats (from its input pool), one worker;
- a user's model with a 4 MiB FP32 input, 1 in flight, over system shared memory (perf_analyzer
  `--shared-memory system --output-shared-memory-size 4194304`; the engine's `[[load]]` with
  `shm = "system"`, `output_bytes`) and inline;
- `engine perf` over gRPC and over HTTP, 16 in flight, 16 floats: against perf_analyzer's gRPC and
  HTTP rows;
- the generated identity model at 4 MiB over system shared memory with every answer fully
  validated (the `large_tensor` scenario), against perf_analyzer's 4 MiB system-shm row
  (perf_analyzer does not validate); and the same with `[workers] validate = "pages"` (every answer
  checked on 18 sampled 4 KiB pages).
The engine sends one input over and over in these rows, as perf_analyzer does (`[scenarios]
input_pool = 1`: the same requests); two more rows keep its default pool of 8 inputs (a server
reading 32 MiB of inputs in turn instead of the same 4 MiB), without a target.

Targets (issue 18): client CPU per request <= 1.0x perf_analyzer's in every row (<= 2.0x for the
validated one); throughput >= 1.0x at the same concurrency; shm vs inline throughput at 4 MiB for the
`[[load]]` model >= 3.5x (perf_analyzer's own ratio is shown beside it). Where perf_analyzer cannot be
installed the benchmark says why, and measures and reports the engine's rows alone.

    python tools/bench/vs_perf_analyzer.py [--seconds 5] [--settle 2] [--rounds 3] [--only CASE ...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tritonclient.http as httpclient

from common import (ROOT, BenchResult, ServerHandle, Target, child_pids, cpu_seconds,  # isort: skip
                    embedded_server, run_alone, server_successes)
from perf_analyzer_env import PerfAnalyzer, PerfAnalyzerUnavailable, find_perf_analyzer  # isort: skip

MODEL = "identity_fp32"
SMALL = 16  # floats: the 1x16 FP32 request
LARGE = 1 << 20  # floats: 4 MiB
FLOWING = 20  # requests the server must count before a program's load is taken to have begun
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
PA_STOP_TIMEOUT_S = 3.0
SCENARIOS = ("timeout", "crashing_client", "sequence_no_end", "sequence_valid_no_end", "sequence_valid_valid",
             "sequence_no_start", "sequence_valid", "steady_load", "identity", "large_tensor", "streaming")


# -- the cases ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PaCase:
    """One perf_analyzer invocation (several engine rows may compare with the same one)."""

    key: str
    protocol: str  # grpc or http
    concurrency: int
    elements: int
    shm: bool

    def args(self, server: ServerHandle) -> list[str]:
        url = server.grpc_url if self.protocol == "grpc" else server.http_url
        args = ["-m", MODEL, "-u", url, "-i", self.protocol, "--concurrency-range",
                f"{self.concurrency}:{self.concurrency}", "--shape", f"INPUT0:{self.elements}",
                "-p", "600000", "--max-trials", "1"]  # one long window: the benchmark stops it
        if self.shm:
            args += ["--shared-memory", "system", "--output-shared-memory-size", str(self.elements * 4)]
        return args


@dataclass(frozen=True)
class EngineCase:
    key: str
    label: str
    pa: str  # the perf_analyzer case it is compared with
    kind: str  # "load" ([[load]] entry), "large_tensor" (the generated scenario), "perf" (engine perf)
    concurrency: int
    elements: int
    shm: str = "none"
    protocol: str = "grpc"
    validate: str = "all"  # [workers] validate
    # [scenarios] input_pool: 1 sends one input over and over, as perf_analyzer does (the same
    # requests); None keeps the engine's default pool (8 inputs, so that no cache sees one input
    # again and again), shown beside it without a target.
    input_pool: int | None = 1
    cpu_goal: float | None = 1.0  # engine / perf_analyzer client CPU per request, at most (None: no target)
    rps_goal: float | None = 1.0  # engine / perf_analyzer throughput, at least (None: no target)


PA_CASES = {case.key: case for case in (
    PaCase("grpc16", "grpc", 16, SMALL, False),
    PaCase("grpc1", "grpc", 1, SMALL, False),
    PaCase("shm4m", "grpc", 1, LARGE, True),
    PaCase("inline4m", "grpc", 1, LARGE, False),
    PaCase("http16", "http", 16, SMALL, False),
)}
ENGINE_CASES = (
    EngineCase("grpc16", "identity 1x16 FP32, gRPC, 16 in flight", "grpc16", "load", 16, SMALL),
    EngineCase("grpc1", "identity 1x16 FP32, gRPC, 1 in flight", "grpc1", "load", 1, SMALL),
    EngineCase("shm4m", "[[load]] 4 MiB FP32, system shm, 1 in flight", "shm4m", "load", 1, LARGE, shm="system"),
    EngineCase("inline4m", "[[load]] 4 MiB FP32, inline, 1 in flight", "inline4m", "load", 1, LARGE),
    EngineCase("perf_grpc16", "engine perf, gRPC, 16 in flight", "grpc16", "perf", 16, SMALL),
    EngineCase("perf_http16", "engine perf, HTTP, 16 in flight", "http16", "perf", 16, SMALL, protocol="http"),
    EngineCase("validated4m", "identity 4 MiB, system shm, every answer validated", "shm4m", "large_tensor", 1,
               LARGE, shm="system", cpu_goal=2.0, rps_goal=None),
    EngineCase("pages4m", 'identity 4 MiB, system shm, validate = "pages"', "shm4m", "large_tensor", 1, LARGE,
               shm="system", validate="pages", cpu_goal=2.0, rps_goal=None),
    EngineCase("shm4m_pool8", "[[load]] 4 MiB FP32, system shm, 1 in flight, 8 pooled inputs", "shm4m", "load", 1,
               LARGE, shm="system", input_pool=None, cpu_goal=None, rps_goal=None),
    EngineCase("pages4m_pool8", 'identity 4 MiB, system shm, validate = "pages", 8 pooled inputs', "shm4m",
               "large_tensor", 1, LARGE, shm="system", validate="pages", input_pool=None, cpu_goal=None,
               rps_goal=None),
)


def _server_section(server: ServerHandle) -> str:
    return (f'[server]\nurl = "{server.http_url}"\ngrpc_url = "{server.grpc_url}"\n'
            f'metrics_url = "{server.metrics_url}"\n')


def engine_config(case: EngineCase, server: ServerHandle, results: Path, duration_s: float) -> str:
    """The TOML the engine runs a case with, attached to the benchmark's server."""
    # engine perf refuses a point that cannot finish within [run] duration: room for one long window
    run_s = 2 * duration_s if case.kind == "perf" else duration_s
    head = f'[run]\nduration = "{run_s:.0f}s"\nresults_dir = "{results}"\n\n' + _server_section(server)
    if case.kind == "perf":
        return head + f"""
[models]
models = ["{MODEL}"]

[perf]
models = ["{MODEL}"]
protocols = ["{case.protocol}"]
shm_modes = ["{case.shm}"]
batch_sizes = [1]
concurrency = [{case.concurrency}]
input_elements = {case.elements}
window = "{duration_s:.0f}s"
warmup = "1s"
stability_windows = 1
max_windows = 1
"""
    weights = "\n".join(f"{name} = {1 if case.kind == 'large_tensor' and name == 'large_tensor' else 0}"
                        for name in SCENARIOS)
    models = f'["{MODEL}"]' if case.kind == "large_tensor" else "[]"
    pool = f"\ninput_pool = {case.input_pool}" if case.input_pool is not None else ""
    text = head + f"""
[models]
models = {models}

[workers]
count = 1
concurrency = {case.concurrency}
protocol = "{case.protocol}"
shm = "{case.shm}"
validate = "{case.validate}"

[scenarios]
large_tensor_bytes = {case.elements * 4}{pool}

[scenarios.weights]
{weights}

[report]
live = "plain"
formats = ["json"]
"""
    if case.kind == "load":
        output = f"\noutput_bytes = {case.elements * 4}" if case.shm != "none" else ""
        text += f"""
[[load]]
model = "{MODEL}"
inputs = [{{ name = "INPUT0", shape = [{case.elements}] }}]
data = "random"
shm = "{case.shm}"{output}
"""
    return text


# -- measuring a program in its steady state -----------------------------------------------------------
def tree_pids(pid: int) -> list[int]:
    """`pid` and every process below it (its children's children too)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue += child_pids(current)
    return found


def tree_cpu(pid: int) -> float:
    total = 0.0
    for each in tree_pids(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, IndexError):  # gone meanwhile
            total += cpu_seconds(each)
    return total


def _tail(log: Path, lines: int = 8) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    return ""


@contextlib.contextmanager
def _running(command: list[str], log: Path, env: dict[str, str] | None = None,
             stop_timeout_s: float = STOP_TIMEOUT_S) -> Iterator[subprocess.Popen]:
    """A program with its output in `log`; stopped with SIGINT on the way out (its whole session
    killed if it does not end within `stop_timeout_s`)."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                   start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):  # then killed below
                process.wait(stop_timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever of its session is still there
        process.wait()


def steady_window(process: subprocess.Popen, log: Path, server: ServerHandle, seconds: float,
                  settle_s: float) -> dict[str, float]:
    """Client CPU per request and throughput of `process` once its load flows (see the docstring)."""
    base = server_successes(server.http_url, MODEL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while server_successes(server.http_url, MODEL) - base < FLOWING:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before its load began: {_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no load within {START_TIMEOUT_S:g} s: {_tail(log)}")
        time.sleep(0.2)
    time.sleep(settle_s)
    cpu0, count0, wall0 = tree_cpu(process.pid), server_successes(server.http_url, MODEL), time.perf_counter()
    time.sleep(seconds)
    cpu1, count1, wall1 = tree_cpu(process.pid), server_successes(server.http_url, MODEL), time.perf_counter()
    if process.poll() is not None:
        raise RuntimeError(f"exited with {process.returncode} during its window: {_tail(log)}")
    requests = count1 - count0
    return {"requests": requests, "rps": requests / (wall1 - wall0), "cpu_us": (cpu1 - cpu0) / max(requests, 1) * 1e6}


def _shm_files() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def measure_pa(pa: PerfAnalyzer, case: PaCase, server: ServerHandle, work: Path, args: argparse.Namespace,
               notes: set[str]) -> dict[str, float]:
    before = _shm_files()
    log = work / f"pa-{case.key}.log"
    try:
        # perf_analyzer finishes its measurement window before it honours SIGINT: it is killed soon
        with _running(pa.command(*case.args(server)), log, pa.env, PA_STOP_TIMEOUT_S) as process:
            return steady_window(process, log, server, args.seconds, args.settle)
    finally:
        if case.shm:  # killed, it leaves its regions registered with the server and in /dev/shm
            client = httpclient.InferenceServerClient(server.http_url)
            try:
                client.unregister_system_shared_memory()
            finally:
                client.close()
        for name in sorted(_shm_files() - before):
            with contextlib.suppress(OSError):
                os.unlink(f"/dev/shm/{name}")
                notes.add(f"perf_analyzer, killed, left /dev/shm/{name} behind: removed")


def measure_engine(case: EngineCase, server: ServerHandle, work: Path, args: argparse.Namespace) -> dict[str, float]:
    duration = START_TIMEOUT_S + args.settle + args.seconds + 60.0
    config = work / f"engine-{case.key}.toml"
    config.write_text(engine_config(case, server, work / "results", duration))
    command = [sys.executable, "-m", "engine", *(["perf"] if case.kind == "perf" else []), "--config", str(config)]
    log = work / f"engine-{case.key}.log"
    with _running(command, log) as process:
        return steady_window(process, log, server, args.seconds, args.settle)


# -- the benchmark --------------------------------------------------------------------------------------
def _median(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(row[key] for row in rows) for key in ("rps", "cpu_us")} if rows else {}


def run(args: argparse.Namespace) -> BenchResult:
    started = time.monotonic()
    cases = [case for case in ENGINE_CASES if not args.only or case.key in args.only]
    notes: set[str] = set()
    try:
        pa: PerfAnalyzer | None = find_perf_analyzer()
    except PerfAnalyzerUnavailable as exc:
        pa = None
        notes.add(f"perf_analyzer unavailable, its rows skipped: {exc}")
    pa_runs: dict[str, list[dict[str, float]]] = {case.pa: [] for case in cases}
    engine_runs: dict[str, list[dict[str, float]]] = {case.key: [] for case in cases}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-vs-pa-") as tmp, \
            embedded_server(Path(tmp) / "server", (MODEL,), instance_count=1) as server:
        work = Path(tmp)
        for round_index in range(args.rounds):
            for key in pa_runs if pa is not None else ():
                try:
                    row = measure_pa(pa, PA_CASES[key], server, work, args, notes)
                except RuntimeError as exc:
                    errors[f"perf_analyzer {key}"] = str(exc)
                    continue
                pa_runs[key].append(row)
                print(f"  round {round_index + 1}: perf_analyzer {key:<12} {row['rps']:8.0f} req/s "
                      f"{row['cpu_us']:8.0f} us CPU/request", flush=True)
            for case in cases:
                try:
                    row = measure_engine(case, server, work, args)
                except RuntimeError as exc:
                    errors[f"engine {case.key}"] = str(exc)
                    continue
                engine_runs[case.key].append(row)
                print(f"  round {round_index + 1}: engine {case.key:<19} {row['rps']:8.0f} req/s "
                      f"{row['cpu_us']:8.0f} us CPU/request", flush=True)
    return _result(cases, pa_runs, engine_runs, errors, sorted(notes), args, time.monotonic() - started)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _result(cases: list[EngineCase], pa_runs: dict[str, list[dict[str, float]]],
            engine_runs: dict[str, list[dict[str, float]]], errors: dict[str, str], notes: list[str],
            args: argparse.Namespace, seconds: float) -> BenchResult:
    rows: list[list[Any]] = []
    targets: list[Target] = []
    pa_medians = {key: _median(runs) for key, runs in pa_runs.items()}
    engine_medians = {key: _median(runs) for key, runs in engine_runs.items()}
    for case in cases:
        pa, engine = pa_medians.get(case.pa, {}), engine_medians.get(case.key, {})
        cpu_ratio = _ratio(engine.get("cpu_us"), pa.get("cpu_us"))
        rps_ratio = _ratio(engine.get("rps"), pa.get("rps"))
        rows.append([case.label, pa.get("rps", "-"), pa.get("cpu_us", "-"), engine.get("rps", "-"),
                     engine.get("cpu_us", "-"), f"{cpu_ratio:.2f}x" if cpu_ratio else "-",
                     f"{rps_ratio:.2f}x" if rps_ratio else "-"])
        if cpu_ratio is not None and case.cpu_goal is not None:
            targets.append(Target(f"client CPU per request, {case.label}", f"<= {case.cpu_goal:g}x perf_analyzer's",
                                  f"{cpu_ratio:.2f}x ({engine['cpu_us']:.0f} us vs {pa['cpu_us']:.0f} us)",
                                  cpu_ratio <= case.cpu_goal))
        if rps_ratio is not None and case.rps_goal is not None:
            targets.append(Target(f"throughput, {case.label}", f">= {case.rps_goal:g}x perf_analyzer's",
                                  f"{rps_ratio:.2f}x ({engine['rps']:.0f} vs {pa['rps']:.0f} req/s)",
                                  rps_ratio >= case.rps_goal))
    shm, inline = engine_medians.get("shm4m", {}), engine_medians.get("inline4m", {})
    if shm and inline:
        gain = shm["rps"] / inline["rps"]
        pa_gain = _ratio(pa_medians.get("shm4m", {}).get("rps"), pa_medians.get("inline4m", {}).get("rps"))
        beside = f"; perf_analyzer {pa_gain:.1f}x" if pa_gain else ""
        targets.append(Target("shm vs inline throughput, [[load]] 4 MiB, 1 in flight", ">= 3.5x",
                              f"{gain:.1f}x ({shm['rps']:.0f} vs {inline['rps']:.0f} req/s{beside})", gain >= 3.5))
    notes = [*notes, *(f"could not measure {what}: {why}" for what, why in errors.items()),
             f"medians of {args.rounds} interleaved rounds; each program measured over {args.seconds:g} s of its "
             f"steady state ({args.settle:g} s after the server counted its first {FLOWING} requests); client CPU: "
             "its whole process tree's CPU time (the engine: coordinator, aggregator, monitor, workers) / the "
             "requests the server counted",
             "perf_analyzer does not check answers; the engine's [[load]] rows have no expected values to check "
             "(random data), its validated row compares every 4 MiB answer with the input, in its output slot",
             "the same requests: perf_analyzer sends one input over and over, and so does the engine in the rows "
             "with targets ([scenarios] input_pool = 1); the rows with '8 pooled inputs' keep the engine's default "
             "pool (no cache in the server sees one input twice in a row), shown without a target"]
    return BenchResult("vs_perf_analyzer", "The engine beside perf_analyzer 2.51, one server, same requests",
                       ["case", "PA req/s", "PA CPU us/req", "engine req/s", "engine CPU us/req", "CPU vs PA",
                        "req/s vs PA"], rows, targets, notes, seconds)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per program (default 5)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds after its load begins before a program is measured (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--only", nargs="+", choices=[case.key for case in ENGINE_CASES],
                        help="these engine cases (and the perf_analyzer runs they compare with) only")


if __name__ == "__main__":
    run_alone(__doc__, add_arguments, run)
