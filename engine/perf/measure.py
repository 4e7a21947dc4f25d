"""Measure one point: open its lanes, check one answer per lane, warm up, then time-based windows
until the last few agree (or `max_windows`), then let the requests in flight finish.

Timeline of a point, and where each request is counted (results.RequestCounts):

    check (1 per lane) | warm-up | window 1 | window 2 | ... | window n | drain
                       ^stats    ^stats     ^stats             ^stats    ^stats (after drain)

A request belongs to the phase in which its answer arrives. The figures come from the last
`stability_windows` windows; the server split from the statistics read at their two ends.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from model_repo_gen import ModelSpec
from shm import ShmError, ShmPool, Slot

from ..config import PerfSection
from ..server import ServerEndpoints
from .lanes import (
    RECONNECT_PAUSE_S,
    GrpcLane,
    GrpcStreamLane,
    HttpLane,
    Lane,
    LaneCheckError,
)
from .payload import InputTensor, grpc_request, http_request, make_input
from .plan import OPEN, PointSpec
from .recorder import Recorder, Window, close_window, merge_windows
from .results import FAILED, NOT_RUN, PointResult, RequestCounts, measured_result
from .server_stats import ServerSplit, StatsError, StatsReader, StatsSnapshot, split
from .stability import is_stable, spread

WATCHDOG_PERIOD_S = 0.25  # how often requests in flight are checked against request_timeout
SETUP_TIMEOUT_S = 30.0  # connecting a lane
TIMER_SLACK_NS = 1_100_000  # open loop: the last stretch before a scheduled send is waited by yielding
STATS_SETTLE_S = 1.0  # how long the server's success count may lag the last answers


@dataclass(frozen=True)
class MeasureSettings:
    window_s: float
    warmup_s: float
    stability_windows: int
    stability_tolerance: float
    max_windows: int
    request_timeout_s: float
    max_outstanding: int
    distribution: str  # open loop: "constant" or "poisson"
    seed: int
    cuda_device: int = 0  # the GPU of the CUDA shm points' regions ([workers] cuda_device)

    @classmethod
    def from_perf(cls, perf: PerfSection, seed: int, cuda_device: int = 0) -> MeasureSettings:
        return cls(perf.window, perf.warmup, perf.stability_windows, perf.stability_tolerance, perf.max_windows,
                   perf.request_timeout, perf.max_outstanding, perf.request_distribution, seed, cuda_device)


@dataclass(frozen=True)
class PointContext:
    endpoints: ServerEndpoints
    model: ModelSpec
    run_id: str
    index: int  # the point's number in the sweep: its shared-memory regions carry it
    deadline: float  # monotonic seconds: the sweep's time bound


def lane_count(spec: PointSpec, settings: MeasureSettings) -> int:
    """Closed loop: one lane per request in flight. Open loop: enough idle lanes for one second of
    the schedule, at most `max_outstanding` (more in flight than that, and the schedule skips)."""
    if spec.load == OPEN:
        return max(1, min(settings.max_outstanding, math.ceil(spec.level)))
    return int(spec.level)


class _Shm:
    """The point's shared-memory regions: one input slot (read by every lane), an output slot per lane."""

    def __init__(self, spec: PointSpec, ctx: PointContext, tensor: InputTensor, lanes: int,
                 device_id: int = 0) -> None:
        self.client = grpcclient.InferenceServerClient(ctx.endpoints.grpc)
        out_bytes = len(tensor.expected)
        # One region for everything (64-byte aligned slots), registered once for the point.
        room = (len(tensor.raw) + 64) + lanes * (out_bytes + 64)
        try:
            self.pool = ShmPool(self.client, ctx.run_id, ctx.index, mode=spec.shm, region_bytes=max(room, 1 << 16),
                                device_id=device_id)
        except BaseException:
            self.client.close()
            raise
        try:
            self.input = self.pool.input_slot(tensor.array, tensor.datatype)
            self.outputs = [self.pool.output_slot(out_bytes) for _ in range(lanes)]
        except BaseException:
            self.close()
            raise

    def reader(self, slot: Slot) -> Callable[[], bytes]:
        def read() -> bytes:
            return bytes(self.pool.read(slot, np.uint8, (slot.byte_size,)))
        return read

    def close(self) -> None:
        try:
            self.pool.close(raise_errors=False)
        finally:
            self.client.close()


def _make_lanes(spec: PointSpec, ctx: PointContext, tensor: InputTensor, count: int,
                shm: _Shm | None) -> list[Lane]:
    lanes: list[Lane] = []
    shared_grpc = grpc_request(spec.model, tensor) if shm is None else b""
    shared_http = http_request(ctx.endpoints.http, spec.model, tensor) if shm is None else b""
    for index in range(count):
        read = None
        if shm is not None:
            slot = shm.outputs[index]
            shm.pool.clear(slot)  # a stale answer cannot pass the check
            read = shm.reader(slot)
        if spec.protocol == "http":
            request = shared_http or http_request(ctx.endpoints.http, spec.model, tensor, shm.input, shm.outputs[index])
            lanes.append(HttpLane(ctx.endpoints.http, request, tensor.expected, read))
        else:
            body = shared_grpc or grpc_request(spec.model, tensor, shm.input, shm.outputs[index])  # type: ignore[union-attr]
            kind = GrpcStreamLane if spec.protocol == "grpc_stream" else GrpcLane
            lanes.append(kind(ctx.endpoints.grpc, body, tensor.expected, read))
    return lanes


async def _watchdog(lanes: list[Lane], timeout_s: float) -> None:
    """Aborts a request once it has waited `timeout_s` (recorded as an error by its lane), so no
    lane waits forever on a hung model, at no cost per request."""
    limit_ns = int(timeout_s * 1e9)
    while True:
        await asyncio.sleep(min(WATCHDOG_PERIOD_S, timeout_s / 4))
        now = time.monotonic_ns()
        for lane in lanes:
            if lane.since_ns and now - lane.since_ns > limit_ns:
                lane.abort()


async def _closed_lane(lane: Lane, recorder: Recorder, running: list[bool]) -> None:
    send, clock = lane.send, time.monotonic_ns
    while running[0]:
        try:
            await send(clock(), recorder)
        except Exception as exc:  # noqa: BLE001 - whatever a transport raises, the lane counts it and goes on
            recorder.error(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(RECONNECT_PAUSE_S)


async def _fire(lane: Lane, intended_ns: int, recorder: Recorder, idle: collections.deque[Lane]) -> None:
    try:
        recorder.late(time.monotonic_ns() - intended_ns)
        await lane.send(intended_ns, recorder)  # latency from the intended time: no coordinated omission
    except Exception as exc:  # noqa: BLE001 - as in _closed_lane
        recorder.error(f"{type(exc).__name__}: {exc}")
    finally:
        idle.append(lane)


async def _open_schedule(lanes: list[Lane], rate: float, distribution: str, seed: int, recorder: Recorder,
                         running: list[bool], in_flight: set[asyncio.Task[None]]) -> None:
    """Sends at the scheduled times whatever the answers do; a slot with no idle lane is skipped
    (counted), so a slow server cannot slow the schedule down."""
    loop = asyncio.get_running_loop()
    idle = collections.deque(lanes)
    rng = np.random.default_rng(seed)
    mean_gap_ns = 1e9 / rate

    def gap() -> float:
        return rng.exponential(mean_gap_ns) if distribution == "poisson" else mean_gap_ns

    next_ns = float(time.monotonic_ns())
    while running[0]:
        now = time.monotonic_ns()
        while next_ns <= now:
            if idle:
                task = loop.create_task(_fire(idle.popleft(), int(next_ns), recorder, idle))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            else:
                recorder.skip()
            next_ns += gap()
        wait_ns = next_ns - time.monotonic_ns()
        # The event loop's timer wakes up to 1 ms late (epoll rounds its timeout up to whole
        # milliseconds), and the latency counts from the intended time: sleep to just short of it,
        # then yield to the lanes until it comes.
        await asyncio.sleep((wait_ns - TIMER_SLACK_NS) / 1e9 if wait_ns > TIMER_SLACK_NS else 0)


class _Stats:
    """Statistics reads that do not stop the measurement when they fail (the split is then absent)."""

    def __init__(self, reader: StatsReader, model: str) -> None:
        self.reader, self.model, self.problem = reader, model, ""

    async def read(self) -> StatsSnapshot | None:
        try:
            return await self.reader.read(self.model)
        except StatsError as exc:
            self.problem = self.problem or str(exc)
            return None


async def _settled(stats: _Stats, before: StatsSnapshot | None, answered: int) -> StatsSnapshot | None:
    """The statistics once they cover every answer: Triton counts a request when it releases it,
    which can be just after the answer left (seen with gRPC streams), so the count may lag the
    client's for a moment. A count that stays short (or long) after that is what it is."""
    after = await stats.read()
    give_up = time.monotonic() + STATS_SETTLE_S
    while (after is not None and before is not None and after.counts["success"] - before.counts["success"] < answered
           and time.monotonic() < give_up):
        await asyncio.sleep(0.02)
        after = await stats.read()
    return after


def _delta(later: StatsSnapshot | None, earlier: StatsSnapshot | None) -> ServerSplit | None:
    return split(later.minus(earlier)) if later is not None and earlier is not None else None


async def _drain(tasks: list[asyncio.Task[Any]], recorder: Recorder, timeout_s: float) -> None:
    """Let the requests in flight finish; the watchdog aborts any that reaches the timeout, so this
    waits at most a little longer than that. What is left then is cancelled and counted as errors."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout_s + 2 * WATCHDOG_PERIOD_S + 1.0)
    for task in pending:
        task.cancel()
        recorder.error("cancelled: still unanswered when the point ended")
    if pending:
        await asyncio.wait(pending, timeout=5.0)


def _unstable_reason(windows: list[Window], settings: MeasureSettings) -> str:
    last = windows[-settings.stability_windows:]
    return (f"the last {len(last)} of {len(windows)} windows did not agree within {settings.stability_tolerance:.0%} "
            f"(throughput spread {spread([w.throughput for w in last]):.0%}, "
            f"p99 spread {spread([w.p99_us for w in last]):.0%})")


async def measure_point(spec: PointSpec, ctx: PointContext, settings: MeasureSettings,
                        stats_reader: StatsReader) -> PointResult:
    """Measure `spec`; every connection and region it opens is closed before it returns or raises."""
    started = time.monotonic()
    tensor = make_input(ctx.model, spec.batch_size, spec.input_elements, settings.seed + ctx.index)
    count = lane_count(spec, settings)
    stats = _Stats(stats_reader, spec.model)
    recorder = Recorder()
    running = [True]
    tasks: list[asyncio.Task[Any]] = []
    in_flight: set[asyncio.Task[None]] = set()
    shm: _Shm | None = None
    lanes: list[Lane] = []
    watchdog: asyncio.Task[None] | None = None
    try:
        if spec.shm != "none":
            try:
                shm = _Shm(spec, ctx, tensor, count, settings.cuda_device)
            except (ShmError, ValueError, OSError) as exc:
                return PointResult(spec, FAILED, f"shared memory: {exc}", elapsed_s=time.monotonic() - started)
        lanes = _make_lanes(spec, ctx, tensor, count, shm)
        before = await stats.read()
        try:
            await asyncio.gather(*(lane.open(SETUP_TIMEOUT_S) for lane in lanes))
            await asyncio.gather(*(lane.check(settings.request_timeout_s) for lane in lanes))
        except (TimeoutError, LaneCheckError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            return PointResult(spec, FAILED, f"first request: {reason}", elapsed_s=time.monotonic() - started)
        watchdog = asyncio.create_task(_watchdog(lanes, settings.request_timeout_s))

        # Warm-up: the load runs, nothing is counted but the requests themselves.
        if spec.load == OPEN:
            tasks.append(asyncio.create_task(_open_schedule(
                lanes, spec.level, settings.distribution, settings.seed + ctx.index, recorder, running, in_flight)))
        else:
            tasks.extend(asyncio.create_task(_closed_lane(lane, recorder, running)) for lane in lanes)
        await asyncio.sleep(settings.warmup_s)
        warmup = recorder.swap()
        cpu_marks = [time.process_time()]  # this process's CPU: is the client the bottleneck?
        snapshots = [await stats.read()]

        windows: list[Window] = []
        stable, reason = False, ""
        window_start = time.monotonic()
        for _ in range(settings.max_windows):
            if window_start + settings.window_s > ctx.deadline:
                reason = "cut short by the sweep's time bound ([run] duration)"
                break
            await asyncio.sleep(max(0.0, window_start + settings.window_s - time.monotonic()))
            now = time.monotonic()
            windows.append(close_window(recorder.swap(), now - window_start, spec.batch_size))
            cpu_marks.append(time.process_time())
            window_start = now
            snapshots.append(await stats.read())
            if is_stable([w.throughput for w in windows], [w.p99_us for w in windows],
                         settings.stability_windows, settings.stability_tolerance):
                stable = True
                break
        else:
            reason = _unstable_reason(windows, settings)
        measuring = recorder.swap()  # answers between the last window's end and here (none, or a few)

        running[0] = False
        await _drain(tasks + list(in_flight), recorder, settings.request_timeout_s)
        drained = recorder.swap()
        answered = count + warmup.ok + sum(w.requests for w in windows) + measuring.ok + drained.ok
        after = await _settled(stats, before, answered)

        if not windows:  # the sweep's time bound came first: nothing measured, nothing failed
            return PointResult(spec, NOT_RUN, reason, elapsed_s=time.monotonic() - started)
        reported_count = min(settings.stability_windows, len(windows))
        reported = merge_windows(windows[-reported_count:])
        measured_total = sum(w.requests for w in windows)
        counts = RequestCounts(
            check=count, warmup=warmup.ok, measured=measured_total, counted=reported.requests,
            drained=drained.ok + measuring.ok, errors=reported.errors,
            errors_total=warmup.errors + sum(w.errors for w in windows) + measuring.errors + drained.errors,
            skipped=warmup.skipped + sum(w.skipped for w in windows) + measuring.skipped + drained.skipped,
            server_success=split(after.minus(before)).success if after is not None and before is not None else -1,
        )
        if stats.problem:
            reason = "; ".join(filter(None, [reason, f"no server split: {stats.problem}"]))
        elapsed = time.monotonic() - started
        if reported.requests == 0:
            first = next(iter(recorder.error_samples), "no answer")
            return PointResult(spec, FAILED, f"no request was answered in the reported windows: {first}",
                               counts=counts, error_samples=tuple(recorder.error_samples.items()), elapsed_s=elapsed)
        server = _delta(snapshots[-1], snapshots[-1 - reported_count])
        client_cpu_us = (cpu_marks[-1] - cpu_marks[-1 - reported_count]) * 1e6 / reported.requests
        return measured_result(spec, stable, reason, windows, reported, reported_count, server, counts,
                               recorder.error_samples, elapsed, client_cpu_us)
    finally:
        running[0] = False
        for task in [*tasks, *in_flight, *([watchdog] if watchdog else [])]:
            task.cancel()
        leftovers = [t for t in [*tasks, *in_flight, *([watchdog] if watchdog else [])] if not t.done()]
        if leftovers:
            await asyncio.wait(leftovers, timeout=5.0)
        try:
            for lane in lanes:
                await lane.close()
        finally:
            if shm is not None:  # the regions are unregistered and unlinked whatever the lanes did
                shm.close()
