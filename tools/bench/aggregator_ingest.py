"""Aggregator ingest, measured on one core (numbers, not a test):

1. ingest: records/s through what the aggregator does per batch message: msgpack unpack,
   np.frombuffer decode, WindowFolder.add, and a close_until every simulated second
   (target: 1,000,000 records/s);
2. accuracy: whole-run p50/p90/p99/p99.9 merged from the closed windows' histograms against
   numpy's exact percentiles of the same latencies;
3. memory: what the folder holds (tracemalloc, current and peak) after the first tenth and at the
   end of the run: it must stay flat, only open windows are held;
4. store: microseconds per resource value written to SQLite, committed every second.

The messages are the real wire format: bodies built by RecordBuffer, packed by telemetry.pack,
from several senders whose name tables list the same models in different orders.

    python tools/bench/aggregator_ingest.py [--records 10000000] [--models 6] [--scenarios 4] [--rate 5000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.aggregator import LatencyHistogram, WindowFolder, merge_windows
from engine.series_names import process_series, stub_process
from engine.store import RunStore
from workers.telemetry import (
    COLUMNS,
    STATUS_ERROR,
    STATUS_EXPECTED_ERROR,
    STATUS_OK,
    STATUS_WRONG,
    RecordBuffer,
    decode_batch,
    pack,
    unpack,
)

BATCH = 512
TEMPLATES = 256  # distinct batches; the run repeats them, shifted in time
S = 1_000_000_000
# ok, error, wrong, expected error (of a negative scenario), missing error
STATUS_MIX = ((STATUS_OK, 0.955), (STATUS_ERROR, 0.01), (STATUS_WRONG, 0.005), (STATUS_EXPECTED_ERROR, 0.03))


def _templates(models: int, scenarios: int, senders: int, rng: np.random.Generator) -> tuple[list[dict], list]:
    """Batch bodies as RecordBuffer makes them (start times from 0), and each one's answered latencies."""
    names = [f"model_{i}" for i in range(models)]
    kinds = [f"scenario_{i}" for i in range(scenarios)]
    buffers = []
    for _ in range(senders):  # each sender its own order of the same names: codes differ
        buffers.append(RecordBuffer(tuple(rng.permutation(names)), tuple(rng.permutation(kinds)), "grpc", BATCH))
    codes, weights = zip(*STATUS_MIX)
    bodies, answered = [], []
    for t in range(TEMPLATES):
        buffer = buffers[t % senders]
        latency = rng.lognormal(np.log(3e6), 0.6, BATCH).astype(np.int64)
        latency[rng.random(BATCH) < 0.002] *= 50  # a slow tail
        status = rng.choice(codes, BATCH, p=np.array(weights) / sum(weights))
        model = rng.integers(0, models, BATCH)
        scenario = rng.integers(0, scenarios, BATCH)
        for i in range(BATCH):
            buffer.add(i, int(latency[i]), int(model[i]), int(scenario[i]), int(status[i]), 0, -1)
        bodies.append(buffer.take_body())
        answered.append(latency[(status == STATUS_OK) | (status == STATUS_WRONG)])
    return bodies, answered


def _messages(bodies: list[dict], count: int, rate: float) -> list[bytes]:
    """`count` packed batch messages, batch i starting where i - 1 ended at `rate` records/s."""
    step = int(S / rate)
    out = []
    for index in range(count):
        body = bodies[index % len(bodies)]
        start = np.frombuffer(body["columns"]["start_ns"], COLUMNS["start_ns"]) * step + index * BATCH * step
        shifted = {**body, "columns": {**body["columns"], "start_ns": start.tobytes()}}
        out.append(pack("batch", f"worker-{index % 4}", index // 4, shifted))
    return out


def bench_ingest(messages: list[bytes], rate: float, window_s: float, trace: bool = False) -> dict:
    """Fold every message as the aggregator does; CPU time, closed windows, traced memory."""
    folder = WindowFolder(0, window_s=window_s, lateness_s=2.0)
    closed = []
    per_message_ns = BATCH * int(S / rate)
    marks = {len(messages) // 10: "tenth", len(messages) - 1: "end"}
    memory: dict[str, tuple[int, int]] = {}
    if trace:
        tracemalloc.start()
    began = time.process_time()
    next_close = S
    for index, data in enumerate(messages):
        folder.add(decode_batch(unpack(data)))
        now = (index + 1) * per_message_ns
        if now >= next_close:  # the aggregator closes windows once a second
            done = folder.close_until(now)
            if not trace:  # kept for the accuracy figures; traced, they would count as the folder's
                closed += done
            next_close += S
        if trace and index in marks:
            memory[marks[index]] = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
    cpu = time.process_time() - began
    if trace:
        tracemalloc.stop()
    closed += folder.close_all()
    return {"cpu": cpu, "closed": closed, "memory": memory, "late": folder.late_records}


def bench_store(values: int = 100, seconds: int = 300) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore.create(Path(tmp) / "run.sqlite", "bench", "{}", "now")
        samples = {process_series(stub_process(f"model_0_{i}"), "rss_anon"): float(i) for i in range(values)}
        began = time.perf_counter()
        for second in range(seconds):
            store.add_resources(float(second), samples)
            store.commit()
        elapsed = time.perf_counter() - began
        store.close()
    return elapsed / (values * seconds)


def ingest_figures(records: int = 10_000_000, models: int = 6, scenarios: int = 4, senders: int = 4,
                   rate: float = 5_000.0, window: float = 10.0) -> dict:
    """Everything this benchmark measures, as numbers (also what tools/bench/telemetry.py reports)."""
    count = max(10, records // BATCH)
    rng = np.random.default_rng(1)
    bodies, answered = _templates(models, scenarios, senders, rng)
    messages = _messages(bodies, count, rate)
    records = count * BATCH
    run = bench_ingest(messages, rate, window)
    traced = bench_ingest(messages, rate, window, trace=True)
    whole = merge_windows(run["closed"])
    exact_values = np.concatenate([answered[i % TEMPLATES] for i in range(count)])
    assert whole.count == len(exact_values)
    errors = {q: 100 * (whole.percentile(q) / np.percentile(exact_values, q, method="inverted_cdf") - 1)
              for q in (50, 90, 99, 99.9)}
    one = LatencyHistogram()
    one.add(exact_values)
    (tenth, tenth_peak), (end, end_peak) = traced["memory"]["tenth"], traced["memory"]["end"]
    return {
        "records": records, "messages": count, "simulated_hours": records / rate / 3600,
        "records_per_s": records / run["cpu"], "ns_per_record": run["cpu"] / records * 1e9,
        "windows": len(run["closed"]), "late": run["late"], "percentile_error_pct": errors,
        "mean_error_ns": whole.mean_ns - exact_values.mean(), "max_error_ns": whole.max_ns - int(exact_values.max()),
        "merged_equals_whole": one == whole, "memory_tenth_mb": tenth / 1e6, "memory_end_mb": end / 1e6,
        "peak_tenth_mb": tenth_peak / 1e6, "peak_end_mb": end_peak / 1e6,
        "histogram_bytes": float(np.mean([len(w.histogram) for w in run["closed"]])),
        "store_us_per_value": bench_store() * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--scenarios", type=int, default=4)
    parser.add_argument("--senders", type=int, default=4, help="name-table orders (one per simulated worker)")
    parser.add_argument("--rate", type=float, default=5_000.0, help="records per simulated second")
    parser.add_argument("--window", type=float, default=10.0, help="window length, s")
    args = parser.parse_args()
    f = ingest_figures(args.records, args.models, args.scenarios, args.senders, args.rate, args.window)
    print(f"{f['records']:,} records in {f['messages']:,} messages of {BATCH}; {f['simulated_hours']:.1f} simulated "
          f"hours at {args.rate:,.0f} records/s; {args.models} models x {args.scenarios} scenarios, "
          f"{args.window:g} s windows", flush=True)
    rows = [("ingest (unpack + decode + fold + close), one core", f"{f['records_per_s'] / 1e6:8.2f} M records/s"),
            ("  CPU per record", f"{f['ns_per_record']:8.0f} ns"),
            ("windows closed / late records", f"{f['windows']:8,d} / {f['late']}")]
    for q, error in f["percentile_error_pct"].items():
        rows.append((f"whole-run p{q:g} from merged windows vs exact", f"{error:+8.3f} %"))
    rows.append(("whole-run mean, max vs exact", f"{f['mean_error_ns']:+8.3g} ns, {f['max_error_ns']:+d} ns"))
    rows.append(("merged windows == one histogram of everything", f"{f['merged_equals_whole']!s:>8}"))
    rows.append(("folder traced memory held, at 1/10 -> at the end",
                 f"{f['memory_tenth_mb']:8.2f} -> {f['memory_end_mb']:.2f} MB"))
    rows.append(("folder traced peak, first 1/10 -> last 9/10",
                 f"{f['peak_tenth_mb']:8.2f} -> {f['peak_end_mb']:.2f} MB"))
    rows.append(("histogram bytes per window (mean)", f"{f['histogram_bytes']:8.0f} B"))
    rows.append(("store: resource value insert, commit each second", f"{f['store_us_per_value']:8.2f} us"))
    width = max(len(name) for name, _ in rows) + 2
    for name, value in rows:
        print(f"{name:<{width}}{value}")


if __name__ == "__main__":
    main()
