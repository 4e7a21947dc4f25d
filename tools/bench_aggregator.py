"""Aggregator ingest, measured on one core (numbers, not a test):

1. ingest: records/s through what the aggregator does per batch message: msgpack unpack,
   np.frombuffer decode, WindowFolder.add, plus closing windows as simulated time passes
   (target: 1,000,000 records/s);
2. accuracy: the histogram's p50/p99/p99.9 against numpy's exact percentiles;
3. memory: the folder's traced peak after the first and after the last tenth of the records
   (it must stay flat: only open windows are held);
4. store: microseconds per resource value written to SQLite, committed every second.

    python tools/bench_aggregator.py [--records 5000000] [--models 6] [--scenarios 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.aggregator import LatencyHistogram, WindowFolder  # noqa: E402
from engine.store import RunStore  # noqa: E402
from workers.telemetry import RecordBuffer, decode_batch, pack, unpack  # noqa: E402

BATCH = 512
S = 1_000_000_000


def _messages(models: int, scenarios: int, count: int, rate: float, seed: int = 1) -> tuple[list[bytes], np.ndarray]:
    """`count` batch messages as workers send them: `rate` records per simulated second."""
    rng = np.random.default_rng(seed)
    names = tuple(f"model_{i}" for i in range(models))
    kinds = tuple(f"scenario_{i}" for i in range(scenarios))
    buffer = RecordBuffer(names, kinds, "grpc", capacity=BATCH)
    out, latencies = [], []
    t = 0
    for _ in range(count):
        latency = rng.lognormal(np.log(3e6), 0.6, BATCH).astype(np.int64)
        model = rng.integers(0, models, BATCH)
        scenario = rng.integers(0, scenarios, BATCH)
        status = np.where(rng.random(BATCH) < 0.01, 1, 0)
        for i in range(BATCH):
            t += int(S / rate)
            buffer.add(t, int(latency[i]), int(model[i]), int(scenario[i]), int(status[i]))
        out.append(pack("batch", "worker-0", len(out), buffer.take_body()))
        latencies.append(latency[status == 0])
    return out, np.concatenate(latencies)


def bench_ingest(messages: list[bytes], rate: float, trace: bool = False) -> tuple[float, list[int]]:
    """Records/s (trace=False), or the traced memory peaks (trace=True: tracing slows it down)."""
    folder = WindowFolder(0, window_s=10.0, lateness_s=2.0)
    peaks: list[int] = []
    if trace:
        tracemalloc.start()
    began = time.process_time()
    next_close = S
    for index, data in enumerate(messages):
        folder.add(decode_batch(unpack(data)))
        now = (index + 1) * BATCH * int(S / rate)
        if now >= next_close:  # the aggregator closes windows once a second
            folder.close_until(now)
            next_close += S
        if trace and index in (len(messages) // 10, len(messages) - 1):
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.reset_peak()
    elapsed = time.process_time() - began
    if trace:
        tracemalloc.stop()
    folder.close_all()
    return len(messages) * BATCH / elapsed, peaks


def bench_store(values: int = 100, seconds: int = 300) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore.create(Path(tmp) / "run.sqlite", "bench", "{}", "now")
        samples = {f"proc/stub/model_0_{i}/rss_anon": float(i) for i in range(values)}
        began = time.perf_counter()
        for second in range(seconds):
            store.add_resources(float(second), samples)
            store.commit()
        elapsed = time.perf_counter() - began
        store.close()
    return elapsed / (values * seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=5_000_000)
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--scenarios", type=int, default=4)
    parser.add_argument("--rate", type=float, default=2000.0, help="records per simulated second")
    args = parser.parse_args()
    count = max(10, args.records // BATCH)
    print(f"building {count} batch messages of {BATCH} records ...", flush=True)
    messages, answered = _messages(args.models, args.scenarios, count, args.rate)
    rate, _ = bench_ingest(messages, args.rate)
    _, peaks = bench_ingest(messages, args.rate, trace=True)
    whole = LatencyHistogram()
    whole.add(answered)
    print(f"{'ingest (unpack + decode + fold + close), one core':<52} {rate / 1e6:8.2f} M records/s")
    for q in (50, 99, 99.9):
        exact = np.percentile(answered, q, method="inverted_cdf")
        print(f"{f'histogram p{q:g} vs exact':<52} {100 * (whole.percentile(q) / exact - 1):+8.3f} %")
    print(f"{'folder traced peak, first tenth -> last tenth':<52} {peaks[0] / 1e6:8.2f} -> {peaks[1] / 1e6:.2f} MB")
    print(f"{'store: resource value insert, commit each second':<52} {bench_store() * 1e6:8.2f} us")


if __name__ == "__main__":
    main()
