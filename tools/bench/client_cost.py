"""Client cost and throughput on the identity model over gRPC: the engine's worker path beside
plain tritonclient loops, against the same embedded server, at equal concurrency.

Each variant runs in a process of its own (spawned), so its CPU time (all threads, gRPC's
included) is its own: a warm-up second, then `--seconds` measured. Requests are counted by the
server (its statistics for the model, before and after), the same judge for every variant.

- sync:      tritonclient.grpc, one thread, one request at a time (inputs built once, every
             answer compared) - the reference for the CPU target;
- threads:   tritonclient.grpc, one client and one thread per level of concurrency;
- asyncio:   tritonclient.grpc.aio, one client, one task per level of concurrency;
- engine:    a real Worker (workers/worker.py) running the identity scenario: a fresh random
             input of 1 to 64 elements per request (the plain loops send 16), every answer
             validated, telemetry sent over ZeroMQ to a drain process;
- engine, no telemetry: the same with a sender that drops every record.

Every variant runs `--rounds` times, the rounds interleaved, and the medians are reported: a slow
minute of a shared host then hits every variant alike instead of one.

The generated model batches dynamically, as in a run: the plain loops' identical requests merge in
the server, the engine's varied ones do not, so the server spends more per engine request and
throughput at 8 in flight measures the server's work as much as the client's. The highest level
is therefore also measured on the same model without batching, where every request costs the
server the same (`--no-equal-work` skips it).

Targets (issue 7): the engine's client CPU per request at most 0.5x the sync loop's; its
throughput at least the best plain variant's at the same concurrency.

    python tools/bench/client_cost.py [--seconds 4] [--rounds 3] [--concurrency 1 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import (BenchResult, NoTelemetry, Stopwatch, Target, embedded_server, run_alone,  # isort: skip
                    server_successes, tree_cpu_seconds)
from workers import event_loop  # noqa: E402

MODEL = "identity_fp32"
WARMUP_S = 1.0
ELEMENTS = 16


# -- the variants, each run in its own process ----------------------------------------------------
def _plain_request() -> tuple[Any, Any]:
    import numpy as np
    import tritonclient.grpc as grpcclient

    data = np.arange(ELEMENTS, dtype=np.float32).reshape(1, ELEMENTS)
    tensor = grpcclient.InferInput("INPUT0", [1, ELEMENTS], "FP32")
    tensor.set_data_from_numpy(data)
    return tensor, data


def _sync_loop(url: str, stop: threading.Event, counts: list[int], slot: int) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    tensor, data = _plain_request()
    output = [grpcclient.InferRequestedOutput("OUTPUT0")]
    while not stop.is_set():
        result = client.infer(MODEL, [tensor], outputs=output)
        if not np.array_equal(result.as_numpy("OUTPUT0"), data):
            raise AssertionError("wrong answer")
        counts[slot] += 1
    client.close()


class Window:
    """The measured part of a variant: the child says when its warm-up is over, the parent reads
    the server's count then and again `seconds` later, and says when the window is over."""

    def __init__(self, started: Any, ended: Any) -> None:
        self.started, self.ended = started, ended

    def measure(self) -> Stopwatch:
        time.sleep(WARMUP_S)
        with Stopwatch() as watch:
            self.started.set()
            self.ended.wait()
        return watch

    async def measure_async(self) -> Stopwatch:
        await asyncio.sleep(WARMUP_S)
        with Stopwatch() as watch:
            self.started.set()
            await asyncio.get_running_loop().run_in_executor(None, self.ended.wait)
        return watch


def variant_threads(window: Window, url: str, concurrency: int) -> Stopwatch:
    stop, counts = threading.Event(), [0] * concurrency
    threads = [threading.Thread(target=_sync_loop, args=(url, stop, counts, i)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    watch = window.measure()
    stop.set()
    for thread in threads:
        thread.join(30)
    return watch


def variant_asyncio(window: Window, url: str, concurrency: int, loop: str) -> Stopwatch:
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as grpcaio

    async def main() -> Stopwatch:
        client = grpcaio.InferenceServerClient(url)
        tensor, data = _plain_request()
        output = [grpcclient.InferRequestedOutput("OUTPUT0")]
        running = True

        async def lane() -> None:
            while running:
                result = await client.infer(MODEL, [tensor], outputs=output)
                if not np.array_equal(result.as_numpy("OUTPUT0"), data):
                    raise AssertionError("wrong answer")

        lanes = [asyncio.create_task(lane()) for _ in range(concurrency)]
        watch = await window.measure_async()
        running = False
        await asyncio.gather(*lanes)
        await client.close()
        return watch

    return event_loop.run(main(), loop)


def variant_engine(window: Window, url: str, concurrency: int, loop: str, endpoint: str | None) -> Stopwatch:
    from engine.config import DEFAULT_WEIGHTS, ScenariosSection
    from model_repo_gen import RepoOptions, generate_repository
    from workers.worker import Worker, WorkerSpec

    with tempfile.TemporaryDirectory() as tmp:
        specs = generate_repository(Path(tmp), RepoOptions(models=(MODEL,)))
    weights = {**{k: 0 for k in DEFAULT_WEIGHTS}, "identity": 1}
    spec = WorkerSpec(worker_id=0, run_id="bench", seed=1, id_base=1, id_block=1 << 20, grpc_url=url,
                      http_url="127.0.0.1:1", protocol="grpc", concurrency=concurrency, models=tuple(specs),
                      scenarios=ScenariosSection(weights=weights), telemetry_endpoint=endpoint or "inproc://none",
                      deadline_s=3600.0, event_loop=loop)
    worker = Worker(spec)
    if endpoint is None:
        worker.sender.close()
        worker.sender = NoTelemetry()  # type: ignore[assignment]

    return run_worker(worker, window, loop)


def run_worker(worker: Any, window: Window, loop: str) -> Stopwatch:
    """Run a real Worker on `loop` until the window's measured part is over; its Stopwatch."""
    async def main() -> Stopwatch:
        running = asyncio.create_task(worker.run())
        watch = await window.measure_async()
        worker.stop()
        await running
        return watch

    return event_loop.run(main(), loop)


def _child(name: str, args: tuple, started: Any, ended: Any, results: Any) -> None:
    function = {"threads": variant_threads, "asyncio": variant_asyncio, "engine": variant_engine}[name]
    watch = function(Window(started, ended), *args)
    results.put({"cpu_s": watch.cpu, "wall_s": watch.wall})


def _drain(endpoint: str, ready: Any, stop: Any) -> None:
    import zmq

    context = zmq.Context()
    socket = context.socket(zmq.PULL)
    socket.bind(endpoint)
    ready.set()
    while not stop.is_set():
        if socket.poll(200):
            socket.recv()
    socket.close(0)
    context.term()


@contextlib.contextmanager
def telemetry_drain(directory: str) -> Iterator[str]:
    """A process that takes (and drops) the workers' telemetry, on an endpoint in `directory`."""
    ctx = multiprocessing.get_context("spawn")
    endpoint = f"ipc://{directory}/telemetry.sock"
    ready, stop = ctx.Event(), ctx.Event()
    drain = ctx.Process(target=_drain, args=(endpoint, ready, stop))
    drain.start()
    ready.wait(30)
    try:
        yield endpoint
    finally:
        stop.set()
        drain.join(10)


def measure_variant(child: Any, kind: str, args: tuple, server: Any, seconds: float, model: str) -> dict[str, Any]:
    """Run `child(kind, args, started, ended, results)` in a spawned process; its requests counted by
    the server over its measured part: requests, requests/s, client and server CPU per request."""
    ctx = multiprocessing.get_context("spawn")
    results, started, ended = ctx.Queue(), ctx.Event(), ctx.Event()
    process = ctx.Process(target=child, args=(kind, args, started, ended, results))
    process.start()
    try:
        if not started.wait(120):
            raise RuntimeError(f"{kind}: the variant did not start within 120 s")
        before, server_before = server_successes(server.http_url, model), tree_cpu_seconds(server.pid)
        time.sleep(seconds)
        after, server_after = server_successes(server.http_url, model), tree_cpu_seconds(server.pid)
        ended.set()
        outcome = results.get(timeout=120)
    finally:
        ended.set()
        process.join(60)
        if process.is_alive():
            process.kill()
    requests = after - before
    return {"requests": requests, "rps": requests / outcome["wall_s"],
            "cpu_us": outcome["cpu_s"] / max(requests, 1) * 1e6,
            "server_us": (server_after - server_before) / max(requests, 1) * 1e6}


def measure(kind: str, args: tuple, server: Any, seconds: float, label: str, concurrency: int) -> dict[str, Any]:
    """One variant of this benchmark at one level of concurrency."""
    row = measure_variant(_child, kind, (server.grpc_url, concurrency, *args), server, seconds, MODEL)
    return {"variant": label, "concurrency": concurrency, **row}


# (kind, telemetry, event loop). The engine runs on uvloop by default (workers/event_loop.py); its
# run on asyncio's own loop shows what uvloop is worth, and the plain asyncio client gets uvloop too,
# so the best plain variant is the best a plain client can do.
VARIANTS = [("threads", False, ""), ("asyncio", False, "asyncio"), ("asyncio", False, "uvloop"),
            ("engine", True, "uvloop"), ("engine", False, "uvloop"), ("engine", True, "asyncio")]


def _label(kind: str, telemetry: bool, loop: str, concurrency: int) -> str:
    if kind == "threads":
        return "sync, one thread" if concurrency == 1 else "sync, threads"
    if kind == "asyncio":
        return "asyncio" if loop == "asyncio" else "asyncio on uvloop"
    if loop == "asyncio":
        return "engine worker, asyncio loop"
    return "engine worker" if telemetry else "engine worker, no telemetry"


def _rounds(server: Any, endpoint: str, args: argparse.Namespace, levels: list[int],
            variants: list[tuple[str, bool, str]], setting: str) -> list[dict[str, Any]]:
    """Every variant at every level, `args.rounds` times over, interleaved (a slow minute of the
    host hits all variants alike); each figure is the median of its rounds."""
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for round_index in range(args.rounds):
        for concurrency in levels:
            for kind, telemetry, loop in variants:
                label = _label(kind, telemetry, loop, concurrency)
                extra = (loop, endpoint if telemetry else None) if kind == "engine" else (loop,) if loop else ()
                row = measure(kind, extra, server, args.seconds, label, concurrency)
                runs.setdefault((label, concurrency), []).append(row)
                print(f"  {setting}, round {round_index + 1}: c={concurrency:<3} {label:<28} {row['rps']:8.0f} req/s "
                      f"{row['cpu_us']:7.1f} us CPU/request, server {row['server_us']:7.1f} us", flush=True)
    rows = []
    for (label, concurrency), measured in runs.items():
        row = {"variant": label, "concurrency": concurrency, "setting": setting,
               "requests": sum(r["requests"] for r in measured)}
        for key in ("rps", "cpu_us", "server_us"):
            row[key] = statistics.median(r[key] for r in measured)
        row["cpu_spread"] = (min(r["cpu_us"] for r in measured), max(r["cpu_us"] for r in measured))
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> BenchResult:
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp, telemetry_drain(tmp) as endpoint:
        with embedded_server(Path(tmp) / "default", (MODEL,), instance_count=2) as server:
            rows += _rounds(server, endpoint, args, args.concurrency, VARIANTS, BATCHING)
        if args.equal_work:
            # The generated model batches dynamically: the plain loops' identical 1x16 requests
            # merge, the engine's 1-64 element ones cannot, and the server then spends more per
            # engine request. Without batching every request costs the server the same, and the
            # highest level's throughput compares the clients alone.
            level = max(args.concurrency)
            plain_and_engine = [v for v in VARIANTS if v[0] != "engine" or v[1:] == (True, "uvloop")]
            with embedded_server(Path(tmp) / "unbatched", (MODEL,), instance_count=2,
                                 dynamic_batching=False) as server:
                rows += _rounds(server, endpoint, args, [level], plain_and_engine, NO_BATCHING)
    return _result(rows, time.monotonic() - started)


BATCHING = "dynamic batching"  # the generated model as a run serves it
NO_BATCHING = "no batching"


def _result(rows: list[dict[str, Any]], seconds: float) -> BenchResult:
    sync = next(r for r in rows if r["variant"] == "sync, one thread" and r["setting"] == BATCHING)
    table = [[r["setting"], r["variant"], r["concurrency"], r["requests"], r["rps"], r["cpu_us"],
              f"{r['cpu_spread'][0]:.0f}-{r['cpu_spread'][1]:.0f}", r["cpu_us"] / sync["cpu_us"], r["server_us"]]
             for r in rows]
    targets = []
    for concurrency in sorted({r["concurrency"] for r in rows if r["setting"] == BATCHING}):
        level = [r for r in rows if r["concurrency"] == concurrency and r["setting"] == BATCHING]
        engine = next(r for r in level if r["variant"] == "engine worker")
        ratio = engine["cpu_us"] / sync["cpu_us"]
        targets.append(Target(f"client CPU per request, concurrency {concurrency}", "<= 0.5x the sync loop's",
                              f"{ratio:.2f}x ({engine['cpu_us']:.0f} us vs {sync['cpu_us']:.0f} us)", ratio <= 0.5))
    for setting in (BATCHING, NO_BATCHING):
        for concurrency in sorted({r["concurrency"] for r in rows if r["setting"] == setting}):
            level = [r for r in rows if r["concurrency"] == concurrency and r["setting"] == setting]
            engine = next(r for r in level if r["variant"] == "engine worker")
            best = max((r for r in level if not r["variant"].startswith("engine")), key=lambda r: r["rps"])
            targets.append(Target(f"throughput, concurrency {concurrency}, {setting}",
                                  "at least the best plain variant's",
                                  f"{engine['rps'] / best['rps']:.2f}x ({engine['rps']:.0f} vs "
                                  f"{best['rps']:.0f} req/s, "
                                  f"{best['variant']})", engine["rps"] >= best["rps"]))
    return BenchResult("client_cost", "1. Client cost and throughput: identity model (1x16 FP32), gRPC",
                       ["server model", "variant", "concurrency", "requests", "req/s", "client CPU us/req",
                        "CPU range", "CPU vs sync", "server CPU us/req"],
                       table, targets, seconds=seconds,
                       notes=["each figure is the median of interleaved rounds (CPU range: lowest and highest "
                              "round); requests: all rounds together",
                              "client CPU: the process's own CPU time (all threads) over the measured seconds, "
                              "divided by the requests the server counted in them; server CPU: tritonserver and its "
                              "python backend stubs over the same seconds",
                              "engine worker: on uvloop, the engine's default ([workers] event_loop); 'asyncio "
                              "loop': the same worker on asyncio's own loop; 'asyncio on uvloop': the plain "
                              "tritonclient.grpc.aio loop given uvloop too",
                              "the engine sends a fresh random input of 1 to 64 elements per request and "
                              "validates every answer; the plain loops send one 1x16 input built once",
                              "dynamic batching (the generated model's default) merges the plain loops' identical "
                              "requests but not the engine's varied ones: the server's CPU per request differs by "
                              "client, and throughput at 8 in flight measures the server's work as much as the "
                              "client's; 'no batching' gives every request the same server work"])


def main() -> None:
    run_alone(__doc__, add_arguments, run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="measured seconds per variant and round (default 4: with 16 variants x 3 rounds, "
                             "make bench stays under 15 minutes)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, medians reported (default 3)")
    parser.add_argument("--no-equal-work", dest="equal_work", action="store_false",
                        help="skip the throughput comparison on a model without dynamic batching")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8],
                        help="levels of concurrency to compare at (default 1 8)")


if __name__ == "__main__":
    main()
