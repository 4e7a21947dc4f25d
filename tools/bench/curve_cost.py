"""What CURVE costs a telemetry sender: `python tools/bench/curve_cost.py [--host ADDR]`.

The same sender (full 512-record batches, as a busy worker sends them) pushes to a receiver in
another process over tcp, once plain and once with CURVE (the receiver a CURVE server with the
run's ZAP check). The figure is the sender process's CPU (every thread: libzmq encrypts on its
I/O thread) per record, side by side, alternating rounds so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import time

import numpy as np
import zmq

from common import own_cpu_seconds  # isort: skip
from engine.cluster.keys import ServerKeys, generate_run_keys, secure_server  # noqa: E402  (common: sys.path)
from workers.sender import ClientKeys, TelemetrySender  # noqa: E402
from workers.telemetry import RecordBuffer  # noqa: E402

BATCH = 512


def _receiver(endpoint: str, keys: ServerKeys | None, expected: int, ready: multiprocessing.Event) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.PULL)
    auth = secure_server(socket, keys, context) if keys else None
    socket.bind(endpoint)
    ready.set()
    for _ in range(expected):
        socket.recv()
    socket.close(0)
    if auth:
        auth.stop()
    context.term()


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def measure(endpoint: str, keys: ClientKeys | None, server: ServerKeys | None, batches: int) -> float:
    """Sender CPU in ns per record for `batches` full batches."""
    ready = multiprocessing.get_context("spawn").Event()
    receiver = multiprocessing.get_context("spawn").Process(target=_receiver,
                                                            args=(endpoint, server, batches + 1, ready))
    receiver.start()
    ready.wait(30)
    context = zmq.Context()
    sender = TelemetrySender(endpoint, "bench", RecordBuffer(("m",), ("s",), "grpc", capacity=BATCH),
                             context=context, keys=keys, sndhwm=100_000)
    sender.record(0, 1, 0, 0, 0)  # the handshake, outside the measurement
    sender.flush()
    time.sleep(0.5)
    starts = np.arange(BATCH, dtype=np.int64)
    began = own_cpu_seconds()
    for _ in range(batches):
        for start in starts.tolist():
            sender.record(start, 1000, 0, 0, 0)
    sender.close(timeout_s=60)
    receiver.join(60)
    spent = own_cpu_seconds() - began
    context.term()
    return spent / (batches * BATCH) * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (CURVE is the same on any)")
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    plain, curve = [], []
    for _ in range(args.rounds):
        keys = generate_run_keys()
        plain.append(measure(f"tcp://{args.host}:{_free_port(args.host)}", None, None, args.batches))
        curve.append(measure(f"tcp://{args.host}:{_free_port(args.host)}", keys.client, keys.server, args.batches))
    p, c = float(np.median(plain)), float(np.median(curve))
    print(f"sender CPU per record, {args.batches} batches of {BATCH}, median of {args.rounds} rounds: "
          f"plain {p:.0f} ns, CURVE {c:.0f} ns: +{c - p:.0f} ns/record (+{(c - p) / p * 100:.1f} %)")
    print(f"per batch message ({BATCH} records, {BATCH * 27 + 200} bytes): +{(c - p) * BATCH / 1000:.1f} us")


if __name__ == "__main__":
    main()
