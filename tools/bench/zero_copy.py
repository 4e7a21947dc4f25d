"""Zero-copy system shared memory against inline tensors, on the engine's own request path.

One embedded server (identity_fp32, python backend, 2 instances) and, for every tensor size
(64 KiB, 1 MiB, 4 MiB, 16 MiB; the identity model answers with as many bytes as it gets), the
worker's Executor (workers/executor.py) running identity plans, `--concurrency` (default 2) plans
in flight on one event loop, in two modes one after the other:

- inline: Executor(pool=None): the input travels in the request (raw bytes over the lean gRPC
          client of workers/wire/grpc_client.py), the output comes back in the answer;
- shm:    Executor(pool=ShmPool(mode="system")): each request writes its input into a slot of a
          registered /dev/shm region, the server writes the output into another slot (zeroed
          before the request), which is read in place and compared - exactly as the worker does.

Every answer is validated against the input by the executor. A point is a warm-up (not counted)
and then `--seconds` measured: requests counted from the executor's outcomes, the process's own
CPU time (all threads) over the same seconds, and the CPU time of tritonserver and its stubs.
After each point the server's statistics (/v2/models/<model>/stats, success count) are compared
with the executor's count for the whole point. The HTTP path (workers/wire/http_client.py, which the
executor uses for HTTP) gives extra rows; `--protocols grpc` leaves them out.

Target (issue): at 4 MiB and above, over gRPC, shm at least 3x the inline throughput.

    python tools/bench/zero_copy.py [--seconds 3] [--sizes 64K 1M 4M 16M] [--protocols grpc http]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common import (BenchResult, NoTelemetry, Stopwatch, Target, cpu_seconds, embedded_server,  # isort: skip
                    run_alone, server_successes)
import contextlib

MODEL = "identity_fp32"
INSTANCES = 2
DEFAULT_SIZES = ("64K", "1M", "4M", "16M")
TARGET_FROM = 4 << 20  # bytes: the target applies from this size up
TARGET_RATIO = 3.0
ARRAYS = 4  # distinct inputs per size, taken in turn (made before the point, not timed)
PLAN_DEADLINE_S = 60.0
MIN_REQUESTS = 4  # a point measures on past --seconds until it has this many requests ...
STRETCH = 4.0  # ... for at most this many times --seconds


def parse_size(text: str) -> int:
    """'64K', '1M', '4MiB', '65536' -> bytes (a multiple of 4: FP32 elements)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = units.get(cleaned[-1:], 1)
    number = cleaned[:-1] if cleaned[-1:] in units else cleaned
    size = int(float(number) * scale)
    if size <= 0 or size % 4:
        raise argparse.ArgumentTypeError(f"size {text!r}: a positive number of bytes, a multiple of 4")
    return size


def size_label(size: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


# -- the server's side ------------------------------------------------------------------------
def plan_draw_us(spec: Any, elements: int, repeat: int = 5) -> tuple[float, float]:
    """CPU microseconds the worker spends drawing a large_tensor plan of `elements` FP32 values
    through the real planner: the first (which makes the worker's input pool) and the median of
    `repeat` later ones (a pooled input each): costs the measured points leave out."""
    from engine.config import ScenariosSection
    from workers.plans import PLANNERS, IdSource, PlanContext

    ctx = PlanContext(np.random.default_rng(1), ScenariosSection(large_tensor_bytes=elements * 4),
                      IdSource(1, 1, 0), [spec])
    times = []
    for _ in range(repeat + 1):
        start = time.process_time()
        PLANNERS["large_tensor"](ctx)
        times.append(time.process_time() - start)
    later = sorted(times[1:])
    return times[0] * 1e6, later[len(later) // 2] * 1e6


def server_pids(server_pid: int) -> list[int]:
    """tritonserver and its python backend stubs (one per instance)."""
    from engine.server import find_stub_processes

    return [server_pid, *(stub.pid for stub in find_stub_processes(server_pid))]


def server_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(pid)
    return total


def leftovers(prefixes: tuple[str, ...]) -> list[str]:
    return sorted(p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(prefixes))


# -- one point: a size, a protocol, a mode ------------------------------------------------------
@dataclass
class Tally:
    requests: int = 0
    plans_failed: int = 0
    first_failure: str = ""


async def _drive(executor: Any, arrays: list[np.ndarray], concurrency: int, warmup_s: float, seconds: float,
                 pids: list[int]) -> dict[str, Any]:
    from workers.plans import Plan, Step

    tally = Tally()
    running = True

    async def lane(index: int) -> None:
        turn = index
        while running:
            values = arrays[turn % len(arrays)]
            turn += 1
            plan = Plan("identity", (Step(model=MODEL, values=values, expect=values),), PLAN_DEADLINE_S)
            outcome = await executor.run(plan, 0)
            tally.requests += outcome.requests
            if outcome.failed:
                tally.plans_failed += 1
                tally.first_failure = tally.first_failure or outcome.failure
                if tally.plans_failed >= 20:  # it does not work: stop, and say so
                    return

    lanes = [asyncio.create_task(lane(i)) for i in range(concurrency)]
    try:
        await asyncio.sleep(warmup_s)
        first, server0 = tally.requests, server_cpu(pids)
        with Stopwatch() as watch:
            await asyncio.sleep(seconds)
            # A slow point (large inline tensors over HTTP) goes on until it has a few requests.
            give_up = time.monotonic() + (STRETCH - 1) * seconds
            while tally.requests - first < MIN_REQUESTS and time.monotonic() < give_up \
                    and not all(task.done() for task in lanes):
                await asyncio.sleep(0.02)
            counted = tally.requests - first
        server_s = server_cpu(pids) - server0
    finally:
        running = False
        await asyncio.gather(*lanes, return_exceptions=True)
    return {"requests": counted, "wall_s": watch.wall, "cpu_s": watch.cpu, "server_cpu_s": server_s,
            "total_requests": tally.requests, "plans_failed": tally.plans_failed,
            "first_failure": tally.first_failure}


def measure(server: Any, spec: Any, protocol: str, mode: str, size: int, arrays: list[np.ndarray],
            args: argparse.Namespace, run_id: str, pids: list[int]) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    from shm import ShmPool
    from workers import event_loop
    from workers.executor import Executor

    async def point(pool: Any) -> dict[str, Any]:
        async with Executor(protocol=protocol, grpc_url=server.grpc_url, http_url=server.http_url,
                            models={MODEL: spec}, model_codes={MODEL: 0}, sender=NoTelemetry(),  # type: ignore[arg-type]
                            pool=pool) as executor:
            return await _drive(executor, arrays, args.concurrency, args.warmup, args.seconds, pids)

    before = server_successes(server.http_url, MODEL)
    if mode == "shm":
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            with ShmPool(client, run_id, worker_id=0, mode="system") as pool:
                result = event_loop.run(point(pool))
        finally:  # the pool has unregistered and unlinked its regions, even on failure
            client.close()
    else:
        result = event_loop.run(point(None))
    successes = server_successes(server.http_url, MODEL) - before
    requests = result["requests"]
    row = {"size": size, "protocol": protocol, "mode": mode, **result, "server_successes": successes,
           "rps": requests / result["wall_s"], "cpu_us": result["cpu_s"] / max(requests, 1) * 1e6,
           "server_us": result["server_cpu_s"] / max(requests, 1) * 1e6}
    row["mib_s"] = row["rps"] * size / (1 << 20)
    answered = result["total_requests"] - result["plans_failed"]
    row["stats_match"] = successes == answered
    return row


def run(args: argparse.Namespace) -> BenchResult:
    from shm import standalone_server_region_prefix, worker_region_prefix

    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    run_id = f"bench-zc-{os.getpid()}"
    prefixes = (worker_region_prefix(run_id), standalone_server_region_prefix(os.getpid()))
    rng = np.random.default_rng(20261125)
    draws: dict[int, tuple[float, float]] = {}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench-zero-copy-") as tmp:
        with embedded_server(Path(tmp), (MODEL,), instance_count=INSTANCES) as server:
            spec = next(s for s in server.models if s.name == MODEL)
            pids = server_pids(server.pid)
            print(f"  server up: {server.grpc_url} (gRPC), {len(pids) - 1} stub(s); "
                  f"{args.concurrency} plans in flight, {args.warmup:g} s warm-up + {args.seconds:g} s per point",
                  flush=True)
            for size in args.sizes:
                elements = size // 4
                shape = (1, elements) if spec.max_batch_size > 0 else (elements,)
                arrays = [rng.standard_normal(elements).astype(np.float32).reshape(shape) for _ in range(ARRAYS)]
                draws[size] = plan_draw_us(spec, elements)
                for round_ in range(args.rounds):
                    for protocol in args.protocols:
                        modes = ("inline", "shm") if round_ % 2 == 0 else ("shm", "inline")
                        for mode in modes:
                            row = measure(server, spec, protocol, mode, size, arrays, args, run_id, pids)
                            row["round"] = round_
                            rows.append(row)
                            flag = "" if row["stats_match"] else \
                                f"  (server counted {row['server_successes']}, executor {row['total_requests']})"
                            failed = f"  {row['plans_failed']} FAILED: {row['first_failure']}" \
                                if row["plans_failed"] else ""
                            print(f"  {size_label(size):>7} {protocol:<4} {mode:<6} {row['rps']:8.1f} req/s "
                                  f"{row['mib_s']:7.0f} MiB/s  client {row['cpu_us']:8.0f} us CPU/req  "
                                  f"server {row['server_us']:8.0f} us CPU/req{flag}{failed}", flush=True)
                del arrays
        left = leftovers(prefixes)
    load.append(os.getloadavg()[0])
    return _result(rows, args, time.monotonic() - started, left, draws, load)


def _merge(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (size, protocol, mode): the rounds' requests, wall and CPU times added up."""
    merged: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = (row["size"], row["protocol"], row["mode"])
        if key not in merged:
            merged[key] = dict(row)
            continue
        into = merged[key]
        for name in ("requests", "wall_s", "cpu_s", "server_cpu_s", "total_requests", "plans_failed",
                     "server_successes"):
            into[name] += row[name]
        into["stats_match"] = into["stats_match"] and row["stats_match"]
        into["first_failure"] = into["first_failure"] or row["first_failure"]
    for row in merged.values():
        requests = max(row["requests"], 1)
        row["rps"] = row["requests"] / row["wall_s"]
        row["cpu_us"], row["server_us"] = row["cpu_s"] / requests * 1e6, row["server_cpu_s"] / requests * 1e6
        row["mib_s"] = row["rps"] * row["size"] / (1 << 20)
    return list(merged.values())


def _gzip_note(rows: list[dict[str, Any]]) -> list[str]:
    """HTTP inline far dearer for the server than gRPC inline: say the cause found when it was."""
    by = {(r["size"], r["protocol"], r["mode"]): r for r in rows}
    worse = [(size, by[size, "http", "inline"]["server_us"] / by[size, "grpc", "inline"]["server_us"])
             for size, protocol, mode in by if protocol == "http" and mode == "inline"
             and (size, "grpc", "inline") in by and by[size, "grpc", "inline"]["server_us"] > 0]
    worse = [(size, ratio) for size, ratio in worse if ratio > 3.0]
    if not worse:
        return []
    return ["HTTP inline costs the server " + ", ".join(f"{ratio:.0f}x ({size_label(size)})" for size, ratio in worse)
            + " the CPU per request of gRPC inline: look for compressed answers (the executor asks for "
            "'Accept-Encoding: identity'; aiohttp's default gzip once cost the server 59 ms per 1 MiB answer "
            "instead of 3.7 ms)"]


def _times(ratio: float) -> str:
    """A ratio cut (not rounded) to 2 decimals: 2.998 reads 2.99x, not a 3.00x that missed a 3x target."""
    return f"{math.floor(ratio * 100) / 100:.2f}x" if math.isfinite(ratio) else "-"


def _result(raw: list[dict[str, Any]], args: argparse.Namespace, seconds: float, left: list[str],
            draws: dict[int, tuple[float, float]], load: list[float]) -> BenchResult:
    rows = _merge(raw)
    inline = {(r["size"], r["protocol"]): r for r in rows if r["mode"] == "inline"}
    table, targets = [], []
    for r in rows:
        base = inline.get((r["size"], r["protocol"]))
        if r["mode"] == "shm" and base is not None and base["rps"] > 0 and base["cpu_us"] > 0:
            speed, cpu = _times(r["rps"] / base["rps"]), _times(r["cpu_us"] / base["cpu_us"])
            server = _times(r["server_us"] / base["server_us"]) if base["server_us"] > 0 else "-"
        else:
            speed = cpu = server = "-"
        failed = r["plans_failed"]
        table.append([size_label(r["size"]), r["protocol"], r["mode"], r["requests"], r["rps"], r["mib_s"],
                      r["cpu_us"], r["server_us"], speed, cpu, server,
                      ("yes" if r["stats_match"] else f"NO ({r['server_successes']})") + (f", {failed} failed"
                                                                                          if failed else "")])
        if r["mode"] == "shm" and r["protocol"] == "grpc" and r["size"] >= TARGET_FROM and base is not None:
            ratio = r["rps"] / base["rps"] if base["rps"] > 0 else float("inf")
            targets.append(Target(f"shm throughput, {size_label(r['size'])}, gRPC", f"shm >= {TARGET_RATIO:g}x inline "
                                  "throughput", f"{_times(ratio)} ({r['rps']:.1f} vs {base['rps']:.1f} req/s)",
                                  ratio >= TARGET_RATIO and not r["plans_failed"] and not base["plans_failed"]))
    notes = _gzip_note(rows) + [
        f"the engine's Executor (workers/executor.py) with identity plans on {MODEL} (python backend, "
        f"{INSTANCES} instances, dynamic batching), {args.concurrency} plans in flight on one event loop "
        "(uvloop, as in a worker), "
        f"{args.warmup:g} s warm-up then {args.seconds:g} s measured per point (longer, up to {STRETCH:g}x, until "
        f"{MIN_REQUESTS} requests) x {args.rounds} round(s) with the order of the modes alternating, added up; "
        "inline and shm back to back per size; the input is as large as the output (identity)",
        "inline: Executor(pool=None), tensors in the request and the answer (gRPC: workers/wire/grpc_client.py; "
        "HTTP: workers/wire/http_client.py); shm: Executor(pool=ShmPool(mode='system')), each request writes its input "
        "into a slot, marks the edges of an output slot (ShmPool.poison), the server writes the answer there "
        "and it is compared in place",
        "every answer validated against its input; inputs are 4 pre-made random arrays per size taken in turn "
        "(the worker takes them from its input pool, not timed here); telemetry dropped (a stand-in sender)",
        "not timed above, the worker's own draw of a large_tensor plan (workers/plans.py, inputs from a pool made "
        "once per worker): the first plan, which makes the pool, then each later one: "
        + ", ".join(f"{size_label(size)} {first / 1000:.1f} ms then {later:.1f} us"
                    for size, (first, later) in sorted(draws.items())),
        "client CPU: this process's own CPU time (all threads) over the measured seconds / requests the executor "
        "completed in them; server CPU: tritonserver + its stub processes over the same seconds",
        "stats: the server's success count for the whole point (warm-up and drain included) equals the "
        "executor's answered requests",
        f"host: {os.cpu_count()} CPUs shared by client, server and stubs (and anything else running: load average "
        f"{load[0]:.1f} at the start, {load[-1]:.1f} at the end); shm is mostly memory traffic, inline mostly "
        "Python and protobuf work, so their ratio moves with the host's load: compare runs taken back to back",
        f"left in /dev/shm after the run (this run's regions and the server's): {len(left)}"
        + (f" ({', '.join(left[:4])})" if left else ""),
    ]
    return BenchResult("zero_copy", "2. Zero-copy system shared memory vs inline tensors: identity model (FP32)",
                       ["size", "protocol", "mode", "requests", "req/s", "MiB/s each way", "client CPU us/req",
                        "server CPU us/req", "req/s shm/inline", "client CPU shm/inline", "server CPU shm/inline",
                        "stats match"],
                       table, targets, notes, seconds=seconds)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per point (default 3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per point, not counted (default 1)")
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[parse_size(s) for s in DEFAULT_SIZES],
                        help="tensor sizes, e.g. 64K 1M 4M 16M (the default)")
    parser.add_argument("--protocols", nargs="+", choices=("grpc", "http"), default=["grpc", "http"],
                        help="protocols to measure (default grpc http; the target is judged on grpc)")
    parser.add_argument("--concurrency", type=int, default=2, help="plans in flight (default 2)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds per size, the order of the modes alternating; figures add up (default 2)")


def main() -> None:
    run_alone(__doc__, add_arguments, run)


if __name__ == "__main__":
    main()
