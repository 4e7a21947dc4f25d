"""How many copies of one large input the bundled server holds while it serves the request, and after.

The run's memory budget (engine/memory_budget.py) charges every large request in flight for the
client's slot plus the server's and the python stubs' copies of it. This measures those factors on
the bundled server: a zero model (the timeout scenario's target) with one instance, an input of
--mib MiB in system shared memory, the timeout scenario's 0.1 s client deadline, requests sent one
after the other; the anonymous memory of the server and its stub and the bytes used in /dev/shm
sampled every 10 ms. Twice: with the answer returned inline (what tritonclient does unless asked
otherwise), and with the answer requested into a shm slot (what the engine does for large requests).
Printed per case, as multiples of the input: the peak over the idle baseline, and what is kept after
the last request (the python stub's shm pool, and anything the server does not give back).
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

from engine.server import LaunchedServer, LaunchOptions, find_stub_processes
from model_repo_gen import RepoOptions, generate_repository


def _rss_anon(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _footprint(server_pid: int) -> tuple[int, int]:
    """(anonymous bytes of the server and its stubs, bytes used in /dev/shm)."""
    pids = [server_pid] + [s.pid for s in find_stub_processes(server_pid)]
    return sum(_rss_anon(pid) for pid in pids), shutil.disk_usage("/dev/shm").used


def measure(server: LaunchedServer, mib: int, delay_ms: float, requests: int, output_in_shm: bool) -> dict[str, float]:
    import tritonclient.grpc as grpcclient

    from shm import ShmPool

    size = float(mib << 20)
    client = grpcclient.InferenceServerClient(server.endpoints.grpc)
    try:
        with ShmPool(client, f"cf{os.getpid()}{int(output_in_shm)}", 0, "system") as pool:
            slot = pool.input_slot(np.ones(mib << 18, np.float32))
            time.sleep(1.0)
            base_anon, base_shm = _footprint(server.pid)
            peak = {"anon": 0, "shm": 0, "total": 0}
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    anon, used = _footprint(server.pid)
                    anon, used = anon - base_anon, used - base_shm
                    peak.update(anon=max(peak["anon"], anon), shm=max(peak["shm"], used),
                                total=max(peak["total"], anon + used))
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            deadline_exceeded = 0
            for _ in range(requests):
                out_slot = pool.output_slot(slot.byte_size) if output_in_shm else None
                outputs = [pool.requested_output("OUTPUT0", out_slot)] if out_slot else None
                try:
                    client.infer("zero_fp32", [pool.infer_input("INPUT0", slot)], client_timeout=0.1, outputs=outputs)
                except Exception as exc:  # the deadline is the point
                    deadline_exceeded += "Deadline" in str(exc)
                time.sleep(delay_ms / 1000.0 + 3.0)  # the server finishes the request the client left
                if out_slot is not None:
                    pool.discard(out_slot)
            stop.set()
            sampler.join()
            anon, used = _footprint(server.pid)
    finally:
        client.close()
    return {"peak": peak["total"] / size, "peak anon": peak["anon"] / size, "peak shm": peak["shm"] / size,
            "kept anon": (anon - base_anon) / size, "kept shm": (used - base_shm) / size,
            "deadline exceeded": deadline_exceeded / requests}


def run(args: argparse.Namespace) -> BenchResult:
    rows = []
    figures = {}
    with tempfile.TemporaryDirectory(prefix="copy-factor-") as tmp:
        for output_in_shm in (False, True):
            work = Path(tmp) / str(output_in_shm)
            generate_repository(work / "repo", RepoOptions(models=("zero_fp32",), instance_count=1,
                                                           zero_delay_ms=args.delay_ms))
            server = LaunchedServer(LaunchOptions(repository=work / "repo", work_dir=work / "server",
                                                  startup_timeout=120.0, stop_timeout=15.0))
            server.start()  # a fresh server per case: what one case keeps must not hide the other's
            try:
                case = measure(server, args.mib, args.delay_ms, args.requests, output_in_shm)
            finally:
                server.stop()
            figures[output_in_shm] = case
            rows.append(["shm slot" if output_in_shm else "inline", *(round(v, 2) for v in case.values())])
    inline, slot = figures[False], figures[True]
    return BenchResult(
        "server_copy_factor",
        f"server-side copies of a {args.mib} MiB input (x input), system shm, client deadline 0.1 s, zero model "
        f"delay {args.delay_ms:g} ms, {args.requests} requests one after the other",
        ["answer", *figures[True].keys()], rows,
        [Target("stub pool", "<= engine.memory_budget.STUB_POOL_COPIES (2.0)", f"{slot['kept shm']:.2f}x",
                slot["kept shm"] <= 2.05),
         # The slot case's peak holds the client's own output slot (1x, in /dev/shm) besides the server's.
         Target("server's peak", "<= STUB_POOL_COPIES + SERVER_TRANSIENT_COPIES (4.0)",
                f"{slot['peak'] - 1.0:.2f}x (peak less the client's output slot)", slot["peak"] - 1.0 <= 4.1),
         Target("nothing kept with the answer in a slot", "kept anon < 0.1x", f"{slot['kept anon']:.2f}x (inline: "
                f"{inline['kept anon']:.2f}x)", slot["kept anon"] < 0.1)])


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mib", type=int, default=256, help="input size in MiB")
    parser.add_argument("--requests", type=int, default=4, help="requests sent one after the other")
    parser.add_argument("--delay-ms", type=float, default=500.0, help="the zero model's execute delay")


if __name__ == "__main__":
    run_alone(__doc__, _arguments, run)
