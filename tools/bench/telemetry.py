"""Telemetry: the aggregator's ingest on one core, and the worker-side cost of telemetry as a share
of the worker's CPU. The figures come from aggregator_ingest.py and telemetry_cost.py (each also
runs alone, with more detail).

Targets (issue 7): ingest at least 1,000,000 records/s on one core; telemetry under 3 % of the
worker's CPU.

    python tools/bench/telemetry.py [--records 3000000] [--sender-records 1000000] [--seconds 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import BenchResult, Target, run_alone  # isort: skip
from aggregator_ingest import ingest_figures  # isort: skip
from telemetry_cost import bench_sender, bench_worker  # isort: skip


def run(args: argparse.Namespace) -> BenchResult:
    started = time.monotonic()
    ingest = ingest_figures(records=args.records)
    print(f"  aggregator ingest: {ingest['records_per_s'] / 1e6:.2f} M records/s on one core", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmp:
        sender_ns = bench_sender(args.sender_records, Path(tmp))
        worker_us, requests = bench_worker(args.seconds, args.concurrency, Path(tmp))
    share = sender_ns / 1000 / worker_us
    print(f"  sender: {sender_ns:.0f} ns/record; worker: {worker_us:.1f} us/request; share {share:.2%}", flush=True)
    p99_error = ingest["percentile_error_pct"][99]
    rows = [
        ["aggregator ingest (unpack + decode + fold + close), one core",
         f"{ingest['records_per_s'] / 1e6:.2f} M records/s"],
        ["aggregator CPU per record", f"{ingest['ns_per_record']:.0f} ns"],
        ["whole-run p99 from merged windows vs exact", f"{p99_error:+.3f} %"],
        ["aggregator window state, at 1/10 -> at the end",
         f"{ingest['memory_tenth_mb']:.2f} -> {ingest['memory_end_mb']:.2f} MB"],
        ["sender CPU per record (add + encode + ZeroMQ send)", f"{sender_ns:.0f} ns"],
        [f"worker CPU per request (identity, gRPC, concurrency {args.concurrency}, {requests:,} requests)",
         f"{worker_us:.1f} us"],
        ["telemetry share of the worker's CPU", f"{share:.2%}"],
    ]
    targets = [
        Target("aggregator ingest", ">= 1,000,000 records/s on one core",
               f"{ingest['records_per_s']:,.0f} records/s ({ingest['records']:,} records)",
               ingest["records_per_s"] >= 1e6),
        Target("telemetry cost in the worker", "< 3 % of the worker's CPU",
               f"{share:.2%} ({sender_ns:.0f} ns per record of {worker_us:.1f} us per request)", share < 0.03),
    ]
    return BenchResult("telemetry", "3. Telemetry: aggregator ingest and worker-side cost", ["figure", "value"], rows,
                       targets, seconds=time.monotonic() - started,
                       notes=["ingest: real wire messages (RecordBuffer bodies, msgpack) folded as the aggregator "
                              "does, CPU time of one process"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=int, default=3_000_000, help="records through the aggregator's ingest")
    parser.add_argument("--sender-records", type=int, default=1_000_000, help="records through the sender")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of the worker measurement")
    parser.add_argument("--concurrency", type=int, default=8, help="the worker's concurrency")


def main() -> None:
    run_alone(__doc__, add_arguments, run)


if __name__ == "__main__":
    main()
