"""Telemetry cost, measured two ways in one run (the aggregator's ingest: tools/bench/aggregator_ingest.py)
(numbers, not a test):

1. sender: CPU per record of RecordBuffer.add + batch encode + ZeroMQ send (a receiver process
   drains the socket), in ns/record;
2. worker: CPU per request of a real worker process against the bundled server (identity
   scenario, closed loop), so (1) can be put as a share of the worker's CPU (target: under 3 %).

    python tools/bench/telemetry_cost.py [--records 1000000] [--seconds 10] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from workers.sender import TelemetrySender  # noqa: E402
from workers.telemetry import STATUS_OK, RecordBuffer  # noqa: E402


def _drain(endpoint: str, ready) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.PULL)
    socket.bind(endpoint)
    ready.set()
    while socket.poll(3000):
        socket.recv()
    socket.close(0)
    context.term()


def bench_sender(records: int, workdir: Path) -> float:
    endpoint = f"ipc://{workdir}/bench-sender.sock"
    ready = multiprocessing.get_context("spawn").Event()
    drain = multiprocessing.get_context("spawn").Process(target=_drain, args=(endpoint, ready))
    drain.start()
    ready.wait(10)
    sender = TelemetrySender(endpoint, "bench", RecordBuffer(("identity_fp32",), ("identity",), "grpc"))
    start = time.process_time()
    now = time.monotonic_ns()
    for i in range(records):
        sender.record(now + i, 150_000, 0, 0, STATUS_OK, 0, -1)
    sender.close()
    spent = time.process_time() - start
    drain.join(15)
    return spent / records * 1e9


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_worker(seconds: float, concurrency: int, workdir: Path) -> tuple[float, int]:
    """(CPU us per request, requests) of a real worker process, from its heartbeats' counts."""
    from common import embedded_server

    from engine.config import DEFAULT_WEIGHTS, ScenariosSection
    from workers.telemetry import KIND_HEARTBEAT, unpack
    from workers.worker import WorkerSpec, start_worker

    weights = {**{k: 0 for k in DEFAULT_WEIGHTS}, "identity": 1}
    with embedded_server(workdir, ("identity_fp32",), instance_count=2) as server:
        endpoint = f"ipc://{workdir}/bench-worker.sock"
        context = zmq.Context()
        pull = context.socket(zmq.PULL)
        pull.bind(endpoint)
        spec = WorkerSpec(worker_id=0, run_id="bench", seed=1, id_base=1, id_block=1 << 20,
                          grpc_url=server.grpc_url, http_url=server.http_url, protocol="grpc",
                          concurrency=concurrency, models=server.models, scenarios=ScenariosSection(weights=weights),
                          telemetry_endpoint=endpoint, deadline_s=seconds)
        process = start_worker(spec)
        requests, cpu = 0, 0.0
        while process.is_alive() or pull.poll(500):
            if pull.poll(200):
                message = unpack(pull.recv())
                if message.kind == KIND_HEARTBEAT:
                    requests = sum(v[2] for v in message.body["plans"].values())
                    if process.is_alive():
                        cpu = _cpu_seconds(process.pid)
        process.join()
        pull.close(0)
        context.term()
    return cpu / max(requests, 1) * 1e6, requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmp:
        workdir = Path(tmp)
        sender_ns = bench_sender(args.records, workdir)
        print(f"sender:    {sender_ns:8.0f} ns CPU per record (add + encode + send), {args.records} records")
        per_request_us, requests = bench_worker(args.seconds, args.concurrency, workdir)
        print(f"worker:    {per_request_us:8.1f} us CPU per request ({requests} identity requests, "
              f"concurrency {args.concurrency}, gRPC, inline tensors)")
        print(f"telemetry share of worker CPU: {sender_ns / 1000 / per_request_us:.2%} (target < 3 %)")


if __name__ == "__main__":
    main()
