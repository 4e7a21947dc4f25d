"""What checking an answer costs, per `[workers] validate` mode, beside what sending the request costs.

Answers are checked without copies: an answer that came back in shared memory is a numpy view on
its output slot, compared in place with the pooled input (identity models) or the expected row
(validation data). Here the answer is a view on a real system shared-memory region (shm.SystemRegion,
as a worker's slots) and the expectation an ordinary array, and the check is the worker's own path
(workers/executor.py `_mismatch`, which calls `_same`, as `_judge` does for every answer):

- all:      every answer compared in full (the default): memcmp over both buffers;
- all, digest: the same check for a prebuilt step (the generated identity and large_tensor
            scenarios, a pooled [[load]] request), whose expectation never changes: the answer's
            XXH3-128 digest against the expectation's, made once (reads the answer only);
- pages:    every answer checked; over 256 KiB on its first and last 4 KiB page and `--pages` (16)
            random 4 KiB pages, drawn per answer from a seeded generator; smaller ones in full;
- fraction: `--fraction` (0.1) of the answers compared in full, the others not at all (the figure
            is the mean over answers);
- write:    the reference: np.copyto of the input into a shared-memory slot, what a request that
            writes its input pays once; "x 4 MiB write" divides by it at 4 MiB (a 4 MiB memcpy).

For each size (FP32; 64 KiB, 256 KiB, 1 MiB, 4 MiB, 16 MiB by default) the slots rotate over
`--working-set` MiB of answers and as much of expectations, so a check does not find the last one's
bytes in the core's caches (a worker's answer was just written by the server, on another core).
Figures are CPU time of this process per answer (time.process_time), the median of `--rounds`
rounds of about `--seconds` each per variant; GB/s is answer bytes per CPU second.

For scale, a 4 MiB request over system shared memory costs the whole engine about 230 us of client
CPU and perf_analyzer about 200 us (tools/bench/vs_perf_analyzer.py, one run on a busy host): a full
check of a 4 MiB answer by memcmp reads twice its bytes, about what writing the input costs; by
digest, once; the "pages" mode reads 18 pages whatever the size.

    python tools/bench/check_cost.py [--sizes 64 256 1024 4096 16384] [--seconds 0.3] [--rounds 3]
                                     [--pages 16] [--fraction 0.1] [--working-set 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common import BenchResult, run_alone  # isort: skip
from shm import SystemRegion, region_name  # noqa: E402
from workers.answer_check import AnswerCheck  # noqa: E402
from workers.executor import _mismatch, digest  # noqa: E402

KIB = 1 << 10
MIB = 1 << 20
REFERENCE_BYTES = 4 * MIB
ENGINE_REQUEST_US = 230.0  # a 4 MiB system-shm request, the whole engine (vs_perf_analyzer, 2026-12-06)
PERF_ANALYZER_REQUEST_US = 200.0  # the same request, perf_analyzer's client CPU (the same run)
OUTPUT = "OUTPUT0"
DIGEST = "all, digest"  # "all" as a prebuilt step checks: through digests


def _per_call_us(call: Callable[[int], object], slots: int, seconds: float) -> float:
    """CPU microseconds per call of `call(slot)`, the slots taken in turn, over about `seconds`."""
    done, batch = 0, 1
    start = last = time.process_time_ns()
    while True:
        for k in range(done, done + batch):
            call(k % slots)
        done += batch
        now = time.process_time_ns()
        if now - start >= seconds * 1e9:
            return (now - start) / done / 1e3
        if now - last < 10_000_000:  # batches of 10 ms or more: the clock's own cost stays out
            batch *= 2
        last = now


class Slots:
    """`count` answer slots of `nbytes` in a shared-memory region, the same number of expectations
    (ordinary arrays), and input slots in a second region for the write."""

    def __init__(self, outputs: SystemRegion, inputs: SystemRegion, nbytes: int, working_set: int) -> None:
        self.nbytes = nbytes
        self.count = max(1, min(working_set // nbytes, outputs.size // nbytes))
        elements = nbytes // 4
        rng = np.random.default_rng(nbytes)
        self.want = [rng.random((1, elements), dtype=np.float32) for _ in range(self.count)]
        self.got = [outputs.view(i * nbytes, np.float32, (1, elements)) for i in range(self.count)]
        self.put = [inputs.view(i * nbytes, np.float32, (1, elements)) for i in range(self.count)]
        for got, want in zip(self.got, self.want):
            np.copyto(got, want)  # a right answer in every slot
        self.expected = [[(OUTPUT, want)] for want in self.want]
        self.digests = [[digest(want)] for want in self.want]
        self.answers = [{OUTPUT: got} for got in self.got]

    def write(self, seconds: float) -> float:
        put, want = self.put, self.want
        return _per_call_us(lambda i: np.copyto(put[i], want[i]), self.count, seconds)

    def check(self, check: AnswerCheck, seconds: float, digests: bool = False) -> float:
        expected, answers = self.expected, self.answers
        known = self.digests if digests else [None] * self.count

        def one(i: int) -> None:
            if _mismatch(expected[i], answers[i], check, known[i]) is not None:
                raise AssertionError("a right answer was called wrong")

        return _per_call_us(one, self.count, seconds)


def _l3() -> str:
    path = Path("/sys/devices/system/cpu/cpu0/cache/index3/size")
    return path.read_text().strip() if path.exists() else "unknown"


def run(args: argparse.Namespace) -> BenchResult:
    started = time.monotonic()
    sizes = [int(k) * KIB for k in args.sizes]
    largest = max([*sizes, REFERENCE_BYTES])
    working_set = max(int(args.working_set * MIB), largest)
    run_id = f"bench-check-{os.getpid()}"
    modes = {"all": {}, DIGEST: {}, f"pages {args.pages}": {"pages": args.pages},
             f"fraction {args.fraction:g}": {"fraction": args.fraction}}
    medians: dict[tuple[int, str], float] = {}
    counts: dict[str, AnswerCheck] = {}
    outputs = SystemRegion(region_name(run_id, 0, 0), working_set)
    inputs = SystemRegion(region_name(run_id, 0, 1), working_set)
    try:
        for nbytes in sorted({*sizes, REFERENCE_BYTES}):
            slots = Slots(outputs, inputs, nbytes, working_set)
            rounds: dict[str, list[float]] = {"write": [], **{label: [] for label in modes}}
            checks = {label: AnswerCheck(label.split()[0].rstrip(","), seed=1, **kw) for label, kw in modes.items()}
            if nbytes not in sizes:  # the 4 MiB reference only
                rounds = {"write": []}
            for _ in range(args.rounds):
                rounds["write"].append(slots.write(args.seconds))
                for label in [label for label in rounds if label != "write"]:
                    rounds[label].append(slots.check(checks[label], args.seconds, digests=label == DIGEST))
            for label, values in rounds.items():
                medians[(nbytes, label)] = statistics.median(values)
            counts.update({f"{label} @ {nbytes // KIB} KiB": check for label, check in checks.items()})
            print(f"  {nbytes // KIB:>6} KiB x {slots.count:<4} " + "  ".join(
                f"{label} {medians[(nbytes, label)]:8.1f} us" for label in rounds), flush=True)
            del slots
    finally:
        outputs.close()
        inputs.close()
    reference = medians[(REFERENCE_BYTES, "write")]
    rows = []
    for nbytes in sizes:
        write = medians[(nbytes, "write")]
        for label in ["write", *modes]:
            us = medians[(nbytes, label)]
            rows.append([_size(nbytes), label, us, nbytes / us / 1e3, us / write, us / reference])
    notes = [f"CPU time per answer, medians of {args.rounds} rounds of about {args.seconds:g} s per variant; "
             f"slots rotate over {working_set // MIB} MiB of answers in /dev/shm and as much of expectations "
             f"(L3: {_l3()}); GB/s = answer bytes per CPU second",
             f"x write: against writing the same input into shared memory (np.copyto); x 4 MiB write: against "
             f"a 4 MiB memcpy ({reference:.0f} us here)",
             "pages: answers over 256 KiB compared on the first and last 4 KiB page and the sampled pages; "
             "smaller ones in full (so its 64 and 256 KiB rows are the full check's)"]
    if REFERENCE_BYTES in sizes:
        four = {label: medians[(REFERENCE_BYTES, label)] for label in modes}
        notes.append("a 4 MiB answer beside a 4 MiB system-shm request's client CPU (the whole engine "
                     f"~{ENGINE_REQUEST_US:.0f} us, perf_analyzer ~{PERF_ANALYZER_REQUEST_US:.0f} us, issue 18): "
                     + "; ".join(f"{label} {us:.1f} us = {us / ENGINE_REQUEST_US:.0%} of the engine's, "
                                 f"{us / PERF_ANALYZER_REQUEST_US:.0%} of perf_analyzer's"
                                 for label, us in four.items()))
    skipped = [check for label, check in counts.items() if label.startswith("fraction")]
    if skipped:
        compared = sum(c.answers_compared for c in skipped)
        total = compared + sum(c.answers_skipped for c in skipped)
        notes.append(f"fraction: {compared:,} of {total:,} answers compared ({compared / max(total, 1):.3f})")
    return BenchResult("check_cost", "Checking an answer in place, per [workers] validate mode (FP32, system shm)",
                       ["answer", "check", "CPU us/answer", "GB/s", "x write", "x 4 MiB write"], rows,
                       notes=notes, seconds=time.monotonic() - started)


def _size(nbytes: int) -> str:
    return f"{nbytes // MIB} MiB" if nbytes >= MIB else f"{nbytes // KIB} KiB"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024, 4096, 16384],
                        help="answer sizes in KiB (default 64 256 1024 4096 16384)")
    parser.add_argument("--seconds", type=float, default=0.3, help="CPU seconds per variant per round (default 0.3)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, medians reported (default 3)")
    parser.add_argument("--pages", type=int, default=16, help="validate_pages of the pages mode (default 16)")
    parser.add_argument("--fraction", type=float, default=0.1, help="validate_fraction of the fraction mode "
                                                                    "(default 0.1)")
    parser.add_argument("--working-set", type=float, default=128.0,
                        help="MiB of answers the slots rotate over, and as much of expectations (default 128)")


def main() -> None:
    run_alone(__doc__, add_arguments, run)


if __name__ == "__main__":
    main()
