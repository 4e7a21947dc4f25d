"""How many copies of one large input the bundled server holds while it serves the request.

The run's memory budget (engine/budget.py) charges every large request in flight for the client's
slot plus the server's and the python stubs' copies of it. This measures that factor on the
bundled server: a zero model (the timeout scenario's target), an input of --mib MiB in system
shared memory, the timeout scenario's 0.1 s client deadline, and the memory of the server, its
stubs and /dev/shm sampled every 10 ms until the server has finished the request. Printed: the
peak growth over the idle baseline, as a multiple of the input, and what stays after the request
(the python backend grows its own shared-memory pool to fit, and never gives it back).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from common import BenchResult, Target, run_alone  # noqa: E402 (common puts the checkout on sys.path)
from engine.server import LaunchedServer, LaunchOptions
from engine.server._handle import find_stub_processes
from model_repo_gen import RepoOptions, generate_repository


def _kib(path: Path, field: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def _dev_shm_used() -> int:
    usage = shutil.disk_usage("/dev/shm")
    return usage.used


def _footprint(server_pid: int) -> tuple[int, int]:
    """(anonymous bytes of the server and its stubs, bytes used in /dev/shm)."""
    pids = [server_pid] + [s.pid for s in find_stub_processes(server_pid)]
    anon = 0
    for pid in pids:
        try:
            anon += _kib(Path(f"/proc/{pid}/status"), "RssAnon:")
        except OSError:
            pass
    return anon, _dev_shm_used()


def measure(workdir: Path, mib: int, delay_ms: float, requests: int, deadline: float | None = 0.1,
            output_in_shm: bool = False) -> dict[str, float]:
    import tritonclient.grpc as grpcclient

    from shm import ShmPool

    generate_repository(workdir / "repo", RepoOptions(models=("zero_fp32",), instance_count=1,
                                                      zero_delay_ms=delay_ms))
    server = LaunchedServer(LaunchOptions(repository=workdir / "repo", work_dir=workdir / "server",
                                          startup_timeout=120.0, stop_timeout=15.0))
    server.start()
    try:
        client = grpcclient.InferenceServerClient(server.endpoints.grpc)
        elements = mib * (1 << 20) // 4
        size0 = float(mib << 20)
        with ShmPool(client, f"cf{os.getpid()}", 0, "system") as pool:
            slot = pool.input_slot(np.ones(elements, np.float32))
            out_slot = pool.output_slot(slot.byte_size) if output_in_shm else None
            time.sleep(1.0)
            base_anon, base_shm = _footprint(server.pid)
            peak_anon = peak_shm = peak_total = 0
            stop = threading.Event()

            def sample() -> None:
                nonlocal peak_anon, peak_shm, peak_total
                while not stop.is_set():
                    anon, shm_used = _footprint(server.pid)
                    peak_anon, peak_shm = max(peak_anon, anon - base_anon), max(peak_shm, shm_used - base_shm)
                    peak_total = max(peak_total, anon - base_anon + shm_used - base_shm)
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            error = ""
            kept = []
            for _ in range(requests):
                try:
                    client.infer("zero_fp32", [pool.infer_input("INPUT0", slot)], client_timeout=deadline,
                                 outputs=[pool.requested_output("OUTPUT0", out_slot)] if out_slot else None)
                except Exception as exc:  # the deadline is the point
                    error = str(exc)
                time.sleep(delay_ms / 1000.0 + 3.0)  # the server finishes the request the client left
                kept.append(_footprint(server.pid))
                print("server anon", _kib(Path(f"/proc/{server.pid}/status"), "RssAnon:") / size0,
                      [(_kib(Path(f"/proc/{p.pid}/status"), "RssAnon:") / size0) for p in find_stub_processes(server.pid)])
            stop.set()
            sampler.join()
            after_anon, after_shm = _footprint(server.pid)
        client.close()
        size = float(mib << 20)
    finally:
        server.stop()
    print([((a - base_anon) / size, (b - base_shm) / size) for a, b in kept])
    return {"peak_total": peak_total / size, "peak_anon": peak_anon / size, "peak_shm": peak_shm / size,
            "kept_anon": (after_anon - base_anon) / size, "kept_shm": (after_shm - base_shm) / size,
            "deadline_exceeded": float("Deadline" in error)}


def run(args: argparse.Namespace) -> BenchResult:
    with tempfile.TemporaryDirectory(prefix="copy-factor-") as tmp:
        figures = measure(Path(tmp), args.mib, args.delay_ms, args.requests)
    rows = [[k, round(v, 2)] for k, v in figures.items()]
    return BenchResult("server_copy_factor", f"server-side copies of one {args.mib} MiB input, system shm, "
                       f"client deadline 0.1 s, zero model delay {args.delay_ms:g} ms", ["what", "x input"], rows,
                       [Target("copy factor measured", "at most engine.budget.SERVER_COPIES",
                               f"{figures['peak_total']:.2f}x", True)])


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mib", type=int, default=256, help="input size in MiB")
    parser.add_argument("--requests", type=int, default=3, help="requests sent one after the other")
    parser.add_argument("--delay-ms", type=float, default=500.0, help="the zero model's execute delay")


if __name__ == "__main__":
    run_alone(__doc__, _arguments, run)
