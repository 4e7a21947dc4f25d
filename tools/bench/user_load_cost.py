"""Client cost of a user's model with large inputs over system shared memory: a `[[load]]` entry
of 4 MiB FP32 random inputs, one request in flight, beside the plain tritonclient loop that does
what perf_analyzer does (input and output regions registered once, the input written once, every
request only names them).

Each variant runs in a process of its own (spawned), so its CPU time is its own: a warm-up second,
then `--seconds` measured, `--rounds` rounds interleaved, medians reported. Requests are counted by
the server (its statistics for the model).

- plain, shm written once: tritonclient.grpc, one thread; 4 MiB input region written once, 4 MiB
  output region; the answer is not read (perf_analyzer does not validate either);
- engine worker: a real Worker (workers/worker.py) driving the `[[load]]` entry (data = "random",
  shm = "system", output_bytes = the answer's size, as perf_analyzer's --output-shared-memory-size),
  telemetry sent over ZeroMQ to a drain process.

Target (issue 18): the engine's client CPU per request within 1.5x the plain loop's.

    python tools/bench/user_load_cost.py [--seconds 4] [--rounds 3] [--megabytes 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from client_cost import Window, measure_variant, run_worker, telemetry_drain  # isort: skip
from common import BenchResult, Stopwatch, Target, embedded_server, run_alone  # isort: skip

MODEL = "identity_fp32"
INPUT, OUTPUT = "INPUT0", "OUTPUT0"


def variant_plain(window: Window, url: str, elements: int) -> Stopwatch:
    import numpy as np
    import tritonclient.grpc as grpcclient

    from shm import SystemRegion, region_name, register_system

    client = grpcclient.InferenceServerClient(url)
    nbytes = elements * 4
    run_id = f"bench-{time.monotonic_ns()}"  # its own: a cleanup of the engine's runs leaves it alone
    regions = [SystemRegion(region_name(run_id, 0, i), nbytes) for i in range(2)]
    try:
        for region in regions:
            register_system(client, region.name, region.key, nbytes)
        regions[0].view(0, np.float32, (1, elements))[:] = np.random.default_rng(1).standard_normal((1, elements))
        tensor = grpcclient.InferInput(INPUT, [1, elements], "FP32")
        tensor.set_shared_memory(regions[0].name, nbytes)
        output = grpcclient.InferRequestedOutput(OUTPUT)
        output.set_shared_memory(regions[1].name, nbytes)
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                client.infer(MODEL, [tensor], outputs=[output])

        thread = threading.Thread(target=loop)
        thread.start()
        watch = window.measure()
        stop.set()
        thread.join(30)
        for region in regions:
            client.unregister_system_shared_memory(region.name)
        return watch
    finally:
        for region in regions:
            region.close()
        client.close()


def variant_engine(window: Window, url: str, elements: int, endpoint: str) -> Stopwatch:
    from engine.config import DEFAULT_WEIGHTS, InputSection, LoadSection, ScenariosSection
    from model_repo_gen import RepoOptions, generate_repository
    from workers.user_load import resolve_loads
    from workers.worker import Worker, WorkerSpec

    with tempfile.TemporaryDirectory() as tmp:
        specs = generate_repository(Path(tmp), RepoOptions(models=(MODEL,)))
    entry = LoadSection(model=MODEL, inputs=(InputSection(INPUT, "FP32", (elements,)),), data="random",
                        shm="system", output_bytes=elements * 4)  # the model's output shape is variable
    loads = resolve_loads((entry,), url)
    weights = dict.fromkeys(DEFAULT_WEIGHTS, 0)
    spec = WorkerSpec(worker_id=0, run_id="bench", seed=1, id_base=1, id_block=1 << 20, grpc_url=url,
                      http_url="127.0.0.1:1", protocol="grpc", concurrency=1, models=tuple(specs),
                      scenarios=ScenariosSection(weights=weights), telemetry_endpoint=endpoint, deadline_s=3600.0,
                      shm_mode="system", user_loads=loads)
    return run_worker(Worker(spec), window, "uvloop")


def _child(name: str, args: tuple, started: Any, ended: Any, results: Any) -> None:
    function = {"plain": variant_plain, "engine": variant_engine}[name]
    watch = function(Window(started, ended), *args)
    results.put({"cpu_s": watch.cpu, "wall_s": watch.wall})


LABELS = {"plain": "plain tritonclient, shm written once", "engine": "engine worker, [[load]] random, system shm"}


def run(args: argparse.Namespace) -> BenchResult:
    started = time.monotonic()
    elements = int(args.megabytes * (1 << 20)) // 4
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in LABELS}
    with tempfile.TemporaryDirectory(prefix="bench-user-load-") as tmp, telemetry_drain(tmp) as endpoint, \
            embedded_server(Path(tmp) / "server", (MODEL,), instance_count=1) as server:
        for round_index in range(args.rounds):
            for kind in LABELS:
                extra = (elements, endpoint) if kind == "engine" else (elements,)
                row = measure_variant(_child, kind, (server.grpc_url, *extra), server, args.seconds, MODEL)
                runs[kind].append(row)
                print(f"  round {round_index + 1}: {LABELS[kind]:<44} {row['rps']:7.0f} req/s "
                      f"{row['cpu_us']:9.0f} us CPU/request", flush=True)
    medians = {kind: {key: statistics.median(r[key] for r in rows) for key in ("rps", "cpu_us")}
               for kind, rows in runs.items()}
    plain, engine = medians["plain"], medians["engine"]
    ratio = engine["cpu_us"] / plain["cpu_us"]
    rows = [[LABELS[kind], sum(r["requests"] for r in runs[kind]), m["rps"], m["cpu_us"], m["cpu_us"] / plain["cpu_us"]]
            for kind, m in medians.items()]
    target = Target("client CPU per request, 4 MiB over system shm", "<= 1.5x the plain shm-once loop's",
                    f"{ratio:.2f}x ({engine['cpu_us']:.0f} us vs {plain['cpu_us']:.0f} us)", ratio <= 1.5)
    return BenchResult("user_load_cost", f"User model, {args.megabytes:g} MiB FP32 input over system shm, 1 in flight",
                       ["variant", "requests", "req/s", "client CPU us/req", "vs plain"], rows, [target],
                       seconds=time.monotonic() - started,
                       notes=["medians of interleaved rounds; client CPU: the variant process's own CPU time over "
                              "the measured seconds, divided by the requests the server counted in them",
                              "the engine draws each request's input from a pool of 8 made once per worker "
                              "([scenarios] input_pool), each written into its slot once, and sends telemetry"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per round (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--megabytes", type=float, default=4.0, help="input size in MiB (default 4)")


if __name__ == "__main__":
    run_alone(__doc__, add_arguments, run)
