"""The one executor that runs every request plan, validates every answer, and records it.

Runs on asyncio: a worker keeps `concurrency` plans in flight on one event loop, each awaiting
its own requests. Protocols: "grpc" (unary calls), "grpc_stream" (sequences ride one gRPC
stream per plan, as the reference suite sends them), "http". Decoupled models always go over a
gRPC stream (HTTP has no client for it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash
from tritonclient.utils import np_to_triton_dtype

from model_repo_gen.spec import (
    DECOUPLED_COUNT_INPUT,
    DECOUPLED_OUTPUT,
    DECOUPLED_VALUE_INPUT,
    ModelSpec,
)
from shm import SYSTEM, RegionAlreadyRegistered, ShmPool, Slot, register_system

from .answer_check import PAGE_BYTES, AnswerCheck
from .deadlines import PlanDeadlines
from .host_budget import HOLD_AFTER_DEADLINE_S, LARGE_REQUEST_BYTES, HostBudget
from .plans import DEADLINE_ERROR, NO_START_ERROR, Plan, Step
from .sender import TelemetrySender
from .telemetry import (
    STATUS_ERROR,
    STATUS_EXPECTED_ERROR,
    STATUS_MISSING_ERROR,
    STATUS_OK,
    STATUS_WRONG,
)
from .wire.grpc_client import GrpcError, GrpcStream, GrpcWireClient
from .wire.grpc_message import MODEL_INFER, MODEL_STREAM_INFER, TensorRef, infer_request, infer_result, stream_result
from .wire.http_client import HttpClient
from .wire.http_message import http_request, http_result

OutputSlots = dict[str, tuple[ShmPool, Slot]]  # output name -> the slot its answer is written into

SMALL_TENSOR_BYTES = 64 << 10  # below this, copying a tensor costs less than numpy's per-call overhead
FAILURE_TEXT_LIMIT = 400  # characters of an error or a mismatch kept in an event
QUARANTINE_S = 60.0  # how long a failed request's shared-memory slots stay out of use
# How long a large request waits at most for the host budget before its plan is skipped (counted):
# a plan's first step waits before the plan's clock starts; a later step inside its deadline.
PLAN_BUDGET_WAIT_S = 600.0
STEP_BUDGET_WAIT_S = 20.0
WRITTEN_GRACE_S = 1.0  # a large answer written into its slot: the server's own completion follows
# Prebuilt steps (pooled requests: [[load]] entries, identity, large_tensor): how many the executor
# keeps what it derived from (identity: 64 shapes x 8 inputs per model, about 1 KiB each), how many
# serialized requests per step (one per set of output slots it was sent with) and the largest kept.
DERIVED_LIMIT = 16384
MESSAGES_PER_STEP = 256
MESSAGE_CACHE_BYTES = 64 << 10
KNOWN_ANSWER_BYTES = 4 << 10  # an answer's message kept to be recognized again (its data is in shared memory)


@dataclass(slots=True)  # made for every plan
class PlanOutcome:
    scenario: str
    requests: int = 0
    failed: bool = False
    failure: str = ""  # the first thing that went wrong, verbatim
    abandoned: bool = False  # a sequence given up because the engine itself was late (not a failure)
    skipped: bool = False  # a large request that waited its whole allowance for the host's memory budget
    answered_ns: int = 0  # monotonic ns of the last answer (or error) from the server
    sent_ns: int = 0  # monotonic ns at which the last step was sent


@dataclass
class InFlight:
    """What the heartbeat reports: requests on the wire and sequences waiting for progress.

    A sequence's START is kept apart from its other requests: it may wait in the server's sequence
    backlog for a slot (all slots held) for several idle timeouts, which is the backlog working,
    not a stall; the other requests of a sequence hold a slot already."""

    # token -> (start_ns, model code, START of a sequence)
    requests: dict[int, tuple[int, int, bool]] = field(default_factory=dict)
    sequences: dict[int | str, tuple[int, int, int]] = field(default_factory=dict)  # id -> (model, last ns, step)
    _token: int = 0

    def begin(self, start_ns: int, model: int, start: bool = False) -> int:
        self._token += 1
        self.requests[self._token] = (start_ns, model, start)
        return self._token

    def end(self, token: int) -> None:
        self.requests.pop(token, None)

    def oldest_ns(self) -> int:
        return min((entry[0] for entry in self.requests.values()), default=0)

    def oldest_by_model(self) -> dict[int, int]:
        """Per model code: start of its oldest request in flight that is not a sequence's START."""
        return self.by_model()[0]

    def by_model(self) -> tuple[dict[int, int], dict[int, int], dict[int, tuple[int, int]]]:
        """Per model code, in one pass (at most `concurrency` entries, once a second): the start of
        its oldest request that is not a START, its requests in flight (all of them), and its STARTs
        in flight as (count, start of the oldest)."""
        oldest: dict[int, int] = {}
        counts: dict[int, int] = {}
        starts: dict[int, tuple[int, int]] = {}
        for begun, model, start in self.requests.values():
            counts[model] = counts.get(model, 0) + 1
            if start:
                count, first = starts.get(model, (0, begun))
                starts[model] = (count + 1, min(first, begun))
            elif begun < oldest.get(model, begun + 1):
                oldest[model] = begun
        return oldest, counts, starts


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return DEADLINE_ERROR  # HTTP has no deadline error of its own: say it as gRPC does
    text = str(exc) or type(exc).__name__
    return text[:FAILURE_TEXT_LIMIT]


_memcmp = ctypes.CDLL(None).memcmp
_memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_memcmp.restype = ctypes.c_int


def digest(want: np.ndarray) -> bytes | None:
    """The XXH3-128 digest of an expected tensor that a full check may compare answers with instead
    of the tensor itself (None where `_same` compares small tensors as bytes, or cannot digest it).

    A full check is memory-bound: memcmp reads the answer and the expected tensor, a digest of the
    answer reads only the answer (a 4 MiB answer from memory: about half the CPU of memcmp,
    tools/bench/check_cost.py). Every byte of the answer still counts: an answer that differs
    passes only by a collision of 128-bit digests."""
    if want.nbytes <= SMALL_TENSOR_BYTES or not want.flags.c_contiguous or want.dtype.kind not in "fiub" \
            or want.dtype.itemsize not in (1, 2, 4, 8):
        return None
    return xxhash.xxh3_128_digest(want)


def _same(got: np.ndarray | None, want: np.ndarray, paging: AnswerCheck | None = None,
          want_digest: bytes | None = None) -> bool:
    """Whether an answer equals what it should be: bit for bit, else by value. With `paging` (an
    AnswerCheck in "pages" mode), a large answer is compared on the pages it draws; a sampled page
    that differs sends it to the full comparison by value. `want_digest`: `digest(want)`, for a
    full check that reads only the answer (an expectation that never changes: a prebuilt step's)."""
    if got is None:
        return False
    if want.ndim == 1 and got.size == want.size:
        got = got.reshape(-1)  # flat expectations (validation data files) compare element by element
    if got.shape != want.shape:
        return False
    if got.dtype == want.dtype and want.dtype.kind in "fiub" and want.dtype.itemsize in (1, 2, 4, 8):
        # Bit for bit first (NaN equal to itself; exact for an echo), what differs then by value
        # below (0.0 == -0.0). Small tensors as bytes (far cheaper than array_equal's per-call
        # overhead); large ones through unsigned views, which copy nothing.
        if want.nbytes <= SMALL_TENSOR_BYTES:
            if got.tobytes() == want.tobytes():
                return True
        elif got.flags.c_contiguous and want.flags.c_contiguous:
            offsets = paging.page_offsets(want.nbytes) if paging is not None else None
            if offsets is None and want_digest is not None:
                if xxhash.xxh3_128_digest(got) == want_digest:
                    return True  # else their bytes differ: only a comparison by value may pass it
            elif offsets is None:
                # memcmp over both buffers: quicker than array_equal, and no boolean temporary
                if _memcmp(got.ctypes.data, want.ctypes.data, want.nbytes) == 0:
                    return True
            elif _pages_equal(got.ctypes.data, want.ctypes.data, offsets):
                return True
        elif np.array_equal(got.view(f"u{want.dtype.itemsize}"), want.view(f"u{want.dtype.itemsize}")):
            return True
    if want.dtype == np.object_:
        return all(bytes(a) == bytes(b) for a, b in zip(got.reshape(-1), want.reshape(-1)))
    return bool(np.array_equal(got, want))


def _pages_equal(got: int, want: int, offsets: list[int]) -> bool:
    """memcmp of the PAGE_BYTES pages at `offsets` of two buffers (their addresses)."""
    for offset in offsets:  # noqa: SIM110 - a plain loop: all() over a generator costs more per page
        if _memcmp(got + offset, want + offset, PAGE_BYTES):
            return False
    return True


def _mismatch(expected: list[tuple[str, np.ndarray]], got: Any, check: AnswerCheck,
              digests: list[bytes | None] | None = None) -> tuple[str, np.ndarray | None, np.ndarray] | None:
    """The first expected output an answer gets wrong, as (name, answer, expected); None when they
    all agree, or when `check` passes this answer by uncompared ("fraction"). Counted on `check`.
    `digests`: `digest()` of each expected output, where they never change."""
    if not check.take():
        return None
    paging = check if check.paging else None
    sampled = check.outputs_sampled
    for index, (name, want) in enumerate(expected):
        answer = got.get(name) if isinstance(got, dict) else None
        if not _same(answer, want, paging, digests[index] if digests is not None else None):
            return name, answer, want
    if check.outputs_sampled != sampled:
        check.answers_sampled += 1
    return None


def _inputs(spec: ModelSpec, step: Step) -> list[tuple[str, np.ndarray]]:
    return [(spec.inputs[0].name, step.values), *step.extra_inputs]


def _own_output_slot(pool: ShmPool, room: int, held: list[tuple[ShmPool, Slot, bool]]) -> Slot:
    """An output slot of a checked request's own, poisoned (a stale answer in a reused slot must not
    pass the check), held until the request is over."""
    slot = pool.output_slot(room)
    pool.poison(slot)
    held.append((pool, slot, True))
    return slot


def _input_bytes(step: Step) -> int:
    nbytes = step.values.nbytes
    for _, data in step.extra_inputs:  # a plain loop: sum() over a generator costs more, per plan
        nbytes += data.nbytes
    return nbytes


def _gave_up(error: BaseException) -> bool:
    """The client stopped waiting, but the server may still hold the request: a deadline, a
    cancellation, a connection that went away."""
    text = _describe(error)
    return DEADLINE_ERROR in text or isinstance(error, (asyncio.TimeoutError, ConnectionError)) \
        or "UNAVAILABLE" in text or "CANCELLED" in text.upper()


def _expected(spec: ModelSpec, step: Step) -> list[tuple[str, np.ndarray]]:
    """The outputs a step checks: the first output against `expect`, then any extra ones."""
    first = [(spec.outputs[0].name, step.expect)] if step.expect is not None and spec.outputs else []
    return [*first, *step.extra_expect]


def _output_names(spec: ModelSpec, step: Step) -> list[str]:
    names = [name for name, _ in _expected(spec, step)]
    return names or [t.name for t in spec.outputs[:1]]


class Executor:
    def __init__(self, *, protocol: str, grpc_url: str, http_url: str, models: dict[str, ModelSpec],
                 model_codes: dict[str, int], sender: TelemetrySender, pool: ShmPool | None = None,
                 pools: dict[str, ShmPool] | None = None, budget: HostBudget | None = None,
                 host_inputs: dict[str, str] | None = None, check: AnswerCheck | None = None) -> None:
        self.protocol = protocol
        # How much of each answer is compared ([workers] validate; every answer in full by default),
        # and the counts of what was compared and how (workers/answer_check.py).
        self.check = check if check is not None else AnswerCheck()
        # With a pool, unary requests carry their tensors in shared memory: inputs written into a
        # slot, outputs written by the server into a slot and read in place. `pool` serves steps
        # that do not choose; `pools` (by mode) serves steps that do (users' [[load]] entries).
        self.pool = pool
        self.pools = dict(pools or {})
        # Slots of requests the client gave up on (a deadline, a lost connection, a cancelled plan)
        # wait out QUARANTINE_S before reuse: the server may still read or answer them.
        self._quarantine: collections.deque[tuple[float, ShmPool, Slot]] = collections.deque()
        self.retired_slots = 0
        self._constant_slots: dict[tuple[int, int], Slot] = {}  # (pool, array) -> slot written once
        self._derived: dict[int, _Derived] = {}  # id(prebuilt step) -> what is worked out from it once
        self._shared_outputs: dict[tuple[int, int], Slot] = {}  # (pool, bytes) -> the slot unread answers share
        # Large requests (inputs of LARGE_REQUEST_BYTES or more) take a lease of the host-wide budget
        # first. One the client gave up on keeps its lease and its slots until the server has
        # written its answer into the output slot (or the lease expires): the server still holds it.
        self.budget = budget
        self._large_pending: list[_LargeRequest] = []
        # Host inputs: key -> name of a system region the coordinator wrote once for every worker.
        self.host_inputs = dict(host_inputs or {})
        self._host_registered: set[tuple[int, str]] = set()
        self.stopping: Callable[[], bool] = lambda: False  # the worker's stop: a budget wait gives up
        self.models = models
        self.model_codes = model_codes
        self.sender = sender
        self.in_flight = InFlight()
        self._wire = GrpcWireClient(grpc_url)  # gRPC calls and streams: see wire/grpc_client.py for why not grpc.aio
        self._deadlines = PlanDeadlines()
        self._http = HttpClient(http_url)  # unary HTTP calls: see wire/http_client.py for why not aiohttp

    async def __aenter__(self) -> Executor:
        return self

    def _pool_for(self, step: Step) -> ShmPool | None:
        if not step.shm:
            return self.pool
        return None if step.shm == "none" else self.pools[step.shm]

    async def __aexit__(self, *exc: object) -> None:
        await self._deadlines.close()
        await self._wire.close()
        self._http.close()

    # -- plans ------------------------------------------------------------------------------
    async def run(self, plan: Plan, scenario_code: int, intended_ns: int = 0,
                  task: asyncio.Task | None = None) -> PlanOutcome:
        """Run every step; `intended_ns` (open loop) is when the plan was due: its first request's
        latency counts from then, so a server that falls behind cannot hide its queue. `task`: the
        task this runs in, where the caller knows it (PlanDeadlines.start)."""
        outcome = PlanOutcome(plan.scenario)
        # A large first step waits for the host budget before the plan's clock starts: the draw is
        # honoured (the scenario keeps its weight among what is sent), only later; the wait is the
        # engine's own, so neither the plan's deadline nor an open-loop latency counts it.
        first_lease = None
        if plan.steps and self._large(plan.steps[0]):
            first_lease = await self._take_lease(plan.steps[0], outcome, PLAN_BUDGET_WAIT_S)
            if outcome.skipped:
                return outcome
            if first_lease is not None and self.budget is not None and self.budget.last_wait_s:
                intended_ns = 0
        token = self._deadlines.start(plan.deadline_s, task)
        stream = None
        try:
            if ((plan.steps[0].protocol if plan.steps else "") or self.protocol) == "grpc_stream":
                stream = _SequenceStream(self._wire)
            for index, step in enumerate(plan.steps):
                if index and self._sequence_idled_out(step, outcome.answered_ns, plan.scenario):
                    outcome.abandoned = True
                    break  # the server has let the sequence go: what follows would fail for our lateness
                if not await self._step(step, index, scenario_code, outcome, stream, intended_ns if index == 0 else 0,
                                        first_lease if index == 0 else None):
                    break  # the rest of a broken sequence would only repeat the same failure
        except asyncio.CancelledError:
            if not self._deadlines.expired(token):
                raise
            if not outcome.failed:
                outcome.failed = True
                outcome.failure = f"plan did not finish within {plan.deadline_s:g} s"
        finally:
            self._deadlines.finish(token)
            if stream is not None:
                await stream.close()
            for step in plan.steps:
                if step.sequence_id:
                    self.in_flight.sequences.pop(step.sequence_id, None)
        if outcome.failed:
            self.sender.event("scenario_failed", plan.steps[0].model if plan.steps else "", plan.scenario,
                              outcome.failure)
        return outcome

    def _sequence_idled_out(self, step: Step, answered_ns: int, scenario: str) -> bool:
        """True when this process was so late (a starved event loop, a paused machine) that more
        than the model's sequence idle timeout passed since the previous answer: the server has
        dropped the sequence, and its 'must specify the START flag' error would blame the server
        for the engine's own delay. Said as an `engine_late` event, never as a server error."""
        sequence = self.models[step.model].sequence
        if not step.sequence_id or step.start or step.expect_error or sequence is None:
            return False
        idle_s = (time.monotonic_ns() - answered_ns) / 1e9
        if idle_s <= sequence.idle_timeout_s:
            return False
        self.sender.event("engine_late", step.model, scenario,
                          f"sequence {step.sequence_id} of {step.model} abandoned: the engine sent its next step "
                          f"{idle_s:.2f} s after the last answer, past the {sequence.idle_timeout_s:g} s idle timeout")
        return True

    def _idled_out_on_the_way(self, step: Step, error: BaseException | None, previous_sent_ns: int,
                              outcome: PlanOutcome) -> bool:
        """True when a sequence step sent in time still found its sequence gone, and the time from
        the previous step's send to this step's answer exceeds the idle timeout. The server counts
        idle time from when the previous request left its queue to when this one reached the
        sequence batcher; both lie inside that span, so a late event loop or a slow frontend on
        the way may have used up the timeout without any defect of the server's. The server then
        refused exactly as it must (counted as an expected error, said as an `engine_late` event);
        with a shorter span, the same refusal is a dropped sequence and stays a failure."""
        sequence = self.models[step.model].sequence
        if sequence is None or error is None or step.start or NO_START_ERROR not in _describe(error):
            return False
        span_s = (outcome.answered_ns - previous_sent_ns) / 1e9
        if span_s <= sequence.idle_timeout_s:
            return False
        outcome.abandoned = True
        self.sender.event("engine_late", step.model, outcome.scenario,
                          f"sequence {step.sequence_id} of {step.model} idled out on the way: "
                          f"{span_s:.2f} s from sending the previous step to this step's answer, past the "
                          f"{sequence.idle_timeout_s:g} s idle timeout")
        return True

    async def _step(self, step: Step, index: int, scenario: int, outcome: PlanOutcome,
                    stream: _SequenceStream | None, intended_ns: int = 0, lease: int | None = None) -> bool:
        spec = self.models[step.model]
        model = self.model_codes[step.model]
        seq_code = step.sequence_id if isinstance(step.sequence_id, int) else 0
        # A large later step waits for the host budget inside the plan's deadline (no built-in plan has one).
        if index and self._large(step):
            lease = await self._take_lease(step, outcome, STEP_BUDGET_WAIT_S)
            if outcome.skipped:
                return False
        if step.sequence_id:
            self.in_flight.sequences[step.sequence_id] = (model, time.monotonic_ns(), index)
        start = intended_ns or time.monotonic_ns()
        token = self.in_flight.begin(start, model, step.start)
        derived = None
        if step.prebuilt:  # looked up here, per request; _derive only the first time
            derived = self._derived.get(id(step))
            if derived is None or derived.step is not step:
                derived = self._derive(spec, step)
        error: BaseException | None = None
        got: Any = None
        held: list[tuple[ShmPool, Slot, bool]] = []
        try:
            if spec.decoupled:
                got = await self._stream_decoupled(step)
            elif stream is not None and step.sequence_id:
                got = await stream.infer(spec, step)
            else:
                # sent and read around one await here: a coroutine of its own would be one more
                # frame to suspend and resume per request
                answer, names, slots = self._send_unary(spec, step, held, derived)
                got = self._read_unary(step, names, slots, await answer, derived)
        except Exception as exc:  # every failure is a finding: recorded, not raised
            error = exc
        except asyncio.CancelledError:
            # The plan's deadline (or the stop) cancelled it while it waited on the server: it is
            # still a request, and it failed; without this record a hung request would vanish.
            outcome.requests += 1
            self.sender.record(start, time.monotonic_ns() - start, model, scenario, STATUS_ERROR, seq_code, index)
            # Cut off while the server may hold it: its slots are kept out of use until it is done
            # there (never forgotten: a slot left out of both the pool and the quarantine is lost
            # for the rest of the run, one per hung request).
            if lease is not None:
                self._large_pending.append(_LargeRequest(lease, time.monotonic() + QUARANTINE_S, held))
            else:
                self._give_back(held, gave_up=True)
            raise
        finally:
            self.in_flight.end(token)
        previous_sent_ns, outcome.sent_ns = outcome.sent_ns, start
        outcome.answered_ns = time.monotonic_ns()
        latency = outcome.answered_ns - start
        outcome.requests += 1
        status, failure = self._judge(spec, step, got, error, derived)  # reads shm outputs in place, before release
        if failure and index and self._idled_out_on_the_way(step, error, previous_sent_ns, outcome):
            status, failure = STATUS_EXPECTED_ERROR, ""
        if lease is None:
            if held or self._quarantine:  # (_give_back's own first test, without the call per request)
                self._give_back(held, gave_up=error is not None and _gave_up(error))
        else:
            self._end_lease(lease, held, error)
        self.sender.record(start, latency, model, scenario, status, seq_code, index)
        if step.sequence_id and step.end:
            self.in_flight.sequences.pop(step.sequence_id, None)
        if failure and not outcome.failed:
            outcome.failed, outcome.failure = True, f"{step.model} step {index}: {failure}"
        if self._large_pending:
            self.sweep()
        return not failure and not outcome.abandoned

    def _judge(self, spec: ModelSpec, step: Step, got: Any, error: BaseException | None,
               derived: _Derived | None = None) -> tuple[int, str]:
        if step.expect_error:
            if error is None:
                return STATUS_MISSING_ERROR, f"expected an error containing {step.expect_error!r}, got an answer"
            text = _describe(error)
            if step.expect_error in text:
                return STATUS_EXPECTED_ERROR, ""
            return STATUS_ERROR, f"expected an error containing {step.expect_error!r}, got: {text}"
        if error is not None:
            return STATUS_ERROR, _describe(error)
        if derived is None:
            expected = _expected(spec, step)
            wrong = _mismatch(expected, got, self.check) if expected else None
        else:
            expected = derived.expected
            if expected and derived.digests is None:
                derived.digests = [digest(want) for _, want in expected]
            wrong = _mismatch(expected, got, self.check, derived.digests) if expected else None
        if wrong is not None:
            name, answer, want = wrong
            return STATUS_WRONG, f"{name} {_short(answer)} != expected {_short(want)}"[:FAILURE_TEXT_LIMIT]
        return STATUS_OK, ""

    def _give_back(self, held: list[tuple[ShmPool, Slot, bool]], gave_up: bool) -> None:
        """A request's slots back to their pools: at once where the server is done with it (it
        answered, or refused, or the request never left); after QUARANTINE_S where the client gave
        up while the server may still read or write them. Only the latter: with every failed
        request quarantined, a pool grew by its slots at the rate requests failed (a request path
        failing at once, 4 MiB slots each, filled this host's 24 GiB of /dev/shm within minutes)."""
        if not held and not self._quarantine:
            return  # inline, or only constant inputs and shared outputs: nothing to give back
        now = time.monotonic()
        while self._quarantine and self._quarantine[0][0] <= now:
            _, pool, slot = self._quarantine.popleft()
            pool.release(slot)
        if not gave_up:
            for pool, slot, _ in held:
                pool.release(slot)
        else:
            self.retired_slots += len(held)
            self._quarantine.extend((now + QUARANTINE_S, pool, slot) for pool, slot, _ in held)

    # -- the host budget of large requests -------------------------------------------------------
    def _large(self, step: Step) -> bool:
        """Whether a step must take a lease of the host budget before it is sent."""
        return self.budget is not None and _input_bytes(step) >= LARGE_REQUEST_BYTES

    async def _take_lease(self, step: Step, outcome: PlanOutcome, wait_s: float) -> int | None:
        """A lease for a large step (see `_large`; None for a plan skipped after waiting `wait_s`:
        then `outcome.skipped` is set and the plan goes no further)."""
        nbytes = _input_bytes(step)
        assert self.budget is not None
        lease = await self.budget.acquire(nbytes, (step.timeout_s or 30.0) + HOLD_AFTER_DEADLINE_S, wait_s,
                                          self.stopping)
        if lease is None:
            outcome.skipped = True
            if self.stopping():
                return None  # the run ends: nothing skipped, nothing to say
            self.sender.event("budget_skipped", step.model, outcome.scenario,
                              f"a {nbytes / (1 << 20):.0f} MiB request of {step.model} waited {wait_s:g} s for "
                              "the host's memory budget and was not sent (README: Memory budget)")
        return lease

    def _end_lease(self, lease: int, held: list[tuple[ShmPool, Slot, bool]], error: BaseException | None) -> None:
        """An answer (or an error the server sent) ends the request: lease and slots go back now. A
        request the client gave up on (its deadline, a lost connection) is still the server's: it
        keeps them until the server has written into its output slot, or its lease expires."""
        if error is None or not _gave_up(error):
            self._large_pending.append(_LargeRequest(lease, 0.0, held, done=True))  # freed by the step's sweep
        else:
            self._large_pending.append(_LargeRequest(lease, time.monotonic() + QUARANTINE_S, held))

    def trim_pools(self) -> int:
        """Give back the pools' regions that have stayed unused for a while (ShmPool.trim; the
        worker calls it every heartbeat), and forget the answers read from them. How many went."""
        gone: set[str] = set()
        for pool in {id(pool): pool for pool in (self.pool, *self.pools.values()) if pool is not None}.values():
            gone.update(pool.trim())
        if gone:
            for derived in self._derived.values():
                if derived.answers:  # views of a region given back would keep its memory mapped
                    for key in [key for key in derived.answers if any(region in gone for region, _ in key)]:
                        del derived.answers[key]
        return len(gone)

    def sweep(self) -> None:
        """Give back the leases and slots of large requests the server has finished since (called
        after every step and by the worker's flush tick, so they go back while the worker idles)."""
        if not self._large_pending:
            return
        now = time.monotonic()
        kept = []
        for request in self._large_pending:
            if not request.over(now):
                kept.append(request)
                continue
            # Their own regions, freed whole: kept for reuse, each would hold its size of /dev/shm
            # in every worker for the rest of the run, outside the budget.
            request.held = [(pool, slot, out) for pool, slot, out in request.held
                            if not pool.closed and not pool.discard(slot)]
            if request.held:  # the server still uses a region (it refuses to unregister it): next time
                kept.append(request)
                continue
            self.budget.release(request.lease)
        self._large_pending = kept

    def _tensors(self, spec: ModelSpec, step: Step, names: list[str], held: list[tuple[ShmPool, Slot, bool]]
                 ) -> tuple[list[TensorRef], list[TensorRef], dict[str, tuple[ShmPool, Slot]]]:
        """Inputs and requested outputs: in shared memory with a pool, inline without; and the
        output slots the answer is read from."""
        pool = self._pool_for(step)
        inputs, outputs, slots = [], [], {}
        # An output slot of the request's own, poisoned: where the answer is compared, and where a
        # lease is held (a large request given up on is known to be over on the server once its slot
        # is written). An answer nothing is expected of is never read: such requests share one slot
        # of each size to be written into (as perf_analyzer's requests share its output regions).
        checked = step.expect is not None or bool(step.extra_expect) or self._large(step)
        first_size = 0  # bytes of the first input: what a model that echoes it answers with
        for name, data in _inputs(spec, step):
            if pool is None:
                inputs.append(TensorRef(name, array=data))
            elif step.constant_input:  # written once, read by every request that sends it
                key = (id(pool), id(data))
                if key not in self._constant_slots:
                    self._constant_slots[key] = self._host_slot(pool, step, data) or pool.input_slot(data)
                inputs.append(TensorRef(name, slot=self._constant_slots[key]))
                first_size = first_size or self._constant_slots[key].byte_size
            else:
                slot = pool.input_slot(data)
                held.append((pool, slot, False))
                inputs.append(TensorRef(name, slot=slot))
                first_size = first_size or slot.byte_size
        for name in names:
            # The answer's size is known where the model echoes its first input (every generated
            # model but the user's) or where a user's load says it. An expected error needs no output
            # room, except a large one: an answer the server returns inline after the client gave up
            # is kept by its gRPC front end (1x its size per request state, engine/memory_budget.py);
            # in a slot nothing is kept.
            room = step.output_bytes if spec.kind == "user" else first_size if name == spec.outputs[0].name else 0
            if pool is not None and room and (not step.expect_error or room >= LARGE_REQUEST_BYTES):
                if checked:
                    slot = _own_output_slot(pool, room, held)
                else:
                    slot = self._shared_output(pool, room)
                slots[name] = (pool, slot)
                outputs.append(TensorRef(name, slot=slot))
            else:
                outputs.append(TensorRef(name))
        return inputs, outputs, slots

    @staticmethod
    def _own_outputs(derived: _Derived, held: list[tuple[ShmPool, Slot, bool]]
                     ) -> tuple[list[TensorRef], list[TensorRef], OutputSlots]:
        """A prebuilt checked step's tensors: its inputs as derived, a poisoned output slot of its own
        for each output with room (what _tensors would take, without working it out again)."""
        assert derived.own_outputs is not None
        inputs, plan = derived.own_outputs
        outputs, slots = [], {}
        for name, pool, room in plan:
            if pool is None:
                outputs.append(TensorRef(name))
                continue
            slot = _own_output_slot(pool, room, held)
            slots[name] = (pool, slot)
            outputs.append(TensorRef(name, slot=slot))
        return inputs, outputs, slots

    def _shared_output(self, pool: ShmPool, room: int) -> Slot:
        """The one output slot of `room` bytes that the answers nothing reads are written into."""
        slot = self._shared_outputs.get((id(pool), room))
        if slot is None:
            slot = self._shared_outputs[(id(pool), room)] = pool.output_slot(room)
        return slot

    def _host_slot(self, pool: ShmPool, step: Step, data: np.ndarray) -> Slot | None:
        """The host-wide region that holds this constant input, registered with the server by this
        worker if no other worker has yet; None where there is none (or the pool is not system)."""
        region = self.host_inputs.get(step.host_input) if step.host_input else None
        if region is None or pool.mode != SYSTEM:
            return None
        if (id(pool), region) not in self._host_registered:
            with contextlib.suppress(RegionAlreadyRegistered):  # another worker of the run registered it first
                register_system(pool.client, region, "/" + region, data.nbytes)
            self._host_registered.add((id(pool), region))
        return Slot(region, 0, data.nbytes, SYSTEM, np_to_triton_dtype(data.dtype), tuple(data.shape))

    @staticmethod
    def _answers(result: Any, names: list[str], slots: dict[str, tuple[ShmPool, Slot]]) -> dict[str, Any]:
        return {name: slots[name][0].read_output(result, name, slots[name][1]) if name in slots
                else result.as_numpy(name) for name in names}

    # -- transports ---------------------------------------------------------------------------
    def _derive(self, spec: ModelSpec, step: Step) -> _Derived:
        """What a prebuilt step always needs, worked out the first time it is sent (`_step` looks
        it up in `_derived` and calls this only where it is not there yet)."""
        if len(self._derived) >= DERIVED_LIMIT:
            self._derived.clear()  # a planner that prebuilds without end: start over rather than grow
        derived = self._derived[id(step)] = _Derived(step, _output_names(spec, step), _expected(spec, step))
        return derived

    def _message(self, spec: ModelSpec, step: Step, inputs: list[TensorRef], outputs: list[TensorRef],
                 derived: _Derived | None, fixed: bool, http: bool = False) -> bytes:
        """The serialized request (gRPC; `http`: HTTP/1.1, head and body); a prebuilt step's is kept
        per shared-memory slots it names (`fixed`: the step's own tensors, always the same; up to
        MESSAGE_CACHE_BYTES, as a large inline request is mostly its copy)."""
        if derived is None:
            if http:
                return http_request(self._http.host, spec.name, inputs, outputs, sequence_id=step.sequence_id,
                                    sequence_start=step.start, sequence_end=step.end)
            return infer_request(spec.name, inputs, outputs, sequence_id=step.sequence_id,
                                 sequence_start=step.start, sequence_end=step.end)
        messages = derived.messages
        key = (http,) if fixed else \
            (http, *[(ref.slot.region, ref.slot.offset) for ref in (*inputs, *outputs) if ref.slot is not None])
        message = messages.get(key)
        if message is None:
            # a prebuilt step is a single stateless request
            message = (http_request(self._http.host, spec.name, inputs, outputs) if http
                       else infer_request(spec.name, inputs, outputs))
            if len(message) <= MESSAGE_CACHE_BYTES:
                if len(messages) >= MESSAGES_PER_STEP:
                    messages.clear()
                messages[key] = message
        return message

    def _send_unary(self, spec: ModelSpec, step: Step, held: list[tuple[ShmPool, Slot, bool]],
                    derived: _Derived | None = None) -> tuple[Awaitable[Any], list[str], OutputSlots]:
        """A unary request, built: the awaitable that sends it and gives its answer, the output names
        and the output slots the answer is read from (`_read_unary`)."""
        names = derived.names if derived is not None else _output_names(spec, step)
        if derived is not None and derived.tensors is not None:
            inputs, outputs, slots = derived.tensors
        elif derived is not None and derived.own_outputs is not None:
            inputs, outputs, slots = self._own_outputs(derived, held)
        else:
            inputs, outputs, slots = self._tensors(spec, step, names, held)
            if derived is not None:
                if not held:  # no slot of its own: the same tensors every time
                    derived.tensors = (inputs, outputs, slots)
                elif not any(pool.closed for pool, _, _ in held) and all(out for _, _, out in held):
                    # its inputs written once, only its output slots its own: those are taken anew
                    derived.own_outputs = (inputs, [(ref.name, slots[ref.name][0], slots[ref.name][1].byte_size)
                                                    if ref.name in slots else (ref.name, None, 0)
                                                    for ref in outputs])
                # views of system memory (a CUDA slot is read as a copy: a kept one would be stale)
                derived.answers_in_place = bool(slots) and all(slot.kind == SYSTEM for _, slot in slots.values()) \
                    and sum(slot.byte_size for _, slot in slots.values()) >= SMALL_TENSOR_BYTES
        if (step.protocol or self.protocol) == "http":
            request = self._message(spec, step, inputs, outputs, derived, fixed=not held, http=True)
            return self._http.send(request, step.timeout_s), names, slots
        message = self._message(spec, step, inputs, outputs, derived, fixed=not held)
        return self._wire.unary(MODEL_INFER, message, step.timeout_s), names, slots

    def _read_unary(self, step: Step, names: list[str], slots: OutputSlots, answer: Any,
                    derived: _Derived | None = None) -> dict[str, Any]:
        """The outputs of a unary answer (HTTP: status, body and JSON size; gRPC: the message)."""
        if isinstance(answer, tuple):
            return self._answers(http_result(*answer), names, slots)
        if step.expect is None and not step.extra_expect:
            # Nothing is expected of it (a user's random data without validation rows): its status
            # is the finding, as for perf_analyzer; decoding it would only cost CPU.
            return {}
        if derived is None or not derived.answers_in_place:
            return self._answers(infer_result(answer), names, slots)
        # A prebuilt step's answers in shared memory: a message the same, byte for byte, as one
        # read before into the same slots names the same outputs, datatypes and shapes, so the
        # views made then show this answer (its data is still compared, every time). Decoding the
        # message and making the views again cost more than the comparison of 4 MiB pages does.
        key = tuple([(slot.region, slot.offset) for _, slot in slots.values()])
        known = derived.answers.get(key)
        if known is not None and known[0] == answer:
            return known[1]
        got = self._answers(infer_result(answer), names, slots)
        if len(answer) <= KNOWN_ANSWER_BYTES and all(
                isinstance(got[name], np.ndarray) and got[name].dtype != np.object_ for name in slots):
            if len(derived.answers) >= MESSAGES_PER_STEP:
                derived.answers.clear()
            derived.answers[key] = (bytes(answer), got)
        return got

    async def _stream_decoupled(self, step: Step) -> dict[str, np.ndarray]:
        inputs = [TensorRef(DECOUPLED_VALUE_INPUT, array=step.values.astype(np.int32).reshape(1)),
                  TensorRef(DECOUPLED_COUNT_INPUT, array=np.array([step.stream_count], np.int32))]
        values: list[int] = []
        stream = await self._wire.stream(MODEL_STREAM_INFER, step.timeout_s)
        try:
            await stream.write(infer_request(step.model, inputs, [], enable_empty_final_response=True))
            while True:
                answer = await stream.read()
                if answer is None:
                    raise GrpcError("INTERNAL", "the server ended the stream before its final response")
                result = stream_result(answer)
                out = result.as_numpy(DECOUPLED_OUTPUT)
                if out is not None:
                    values.append(int(out.reshape(-1)[0]))
                if result.get_response().parameters["triton_final_response"].bool_param:
                    break
        except BaseException:
            stream.cancel()  # cut short (a deadline, an error): the server's part of it is dropped
            raise
        stream.done_writing()  # all answered: the server ends the stream itself, nothing to cancel
        return {DECOUPLED_OUTPUT: np.array(values, dtype=np.int32)}


@dataclass(slots=True)
class _Derived:
    """What the executor works out from a prebuilt step (its outputs, its checks, its serialized
    requests), once instead of for every request."""

    step: Step  # kept alive: the executor's table is keyed by its id
    names: list[str]
    expected: list[tuple[str, np.ndarray]]
    messages: dict[tuple, bytes] = field(default_factory=dict)  # by protocol and the shared-memory slots named
    # Its tensors where the request holds no slot of its own (inline, or constant inputs and shared
    # output slots): the same every time.
    tensors: tuple[list[TensorRef], list[TensorRef], OutputSlots] | None = None
    # Where only its output slots are its own (a checked answer): its inputs, and per output (name,
    # pool, room; pool None: answered inline).
    own_outputs: tuple[list[TensorRef], list[tuple[str, ShmPool | None, int]]] | None = None
    # Answers read in place before, by the output slots they were written into: (the message, the
    # outputs it named, as views of those slots).
    answers: dict[tuple, tuple[bytes, dict[str, np.ndarray]]] = field(default_factory=dict)
    # Its answers are views of system shared memory, SMALL_TENSOR_BYTES or more: `answers` kept.
    answers_in_place: bool = False
    # digest() of each of `expected`, made the first time an answer is checked
    digests: list[bytes | None] | None = None


@dataclass(slots=True)
class _LargeRequest:
    """A large request's lease and slots, until the server is done with them."""

    lease: int
    until: float  # monotonic s: given back then at the latest (0 with `done`)
    held: list[tuple[ShmPool, Slot, bool]]  # (pool, slot, is an output slot)
    done: bool = False  # answered: nothing of the server's still refers to it
    written_at: float = 0.0  # when its output slots were first seen written

    def over(self, now: float) -> bool:
        """Answered; or the server has written its answer into the output slots WRITTEN_GRACE_S ago
        (the copy's last bytes land before the server has finished the request: unregistering its
        region at once would race the server's own completion of it); or its time is up."""
        if self.done or now >= self.until:
            return True
        outputs = [(pool, slot) for pool, slot, is_output in self.held if is_output]
        if not outputs:
            return False
        if not self.written_at:
            if not all(pool.closed or pool.written(slot) for pool, slot in outputs):
                return False
            self.written_at = now
        return now - self.written_at >= WRITTEN_GRACE_S


class _SequenceStream:
    """One gRPC stream per plan: each step is sent and its answer awaited before the next."""

    def __init__(self, wire: GrpcWireClient) -> None:
        self._wire = wire
        self._stream: GrpcStream | None = None
        self._owed = False  # a request went out whose answer has not been read

    async def infer(self, spec: ModelSpec, step: Step) -> dict[str, np.ndarray | None]:
        if self._stream is None:
            self._stream = await self._wire.stream(MODEL_STREAM_INFER)
        inputs = [TensorRef(name, array=data) for name, data in _inputs(spec, step)]
        self._owed = True
        await self._stream.write(infer_request(spec.name, inputs, [], sequence_id=step.sequence_id,
                                               sequence_start=step.start, sequence_end=step.end))
        answer = await self._stream.read()
        self._owed = False
        if answer is None:
            raise GrpcError("INTERNAL", "the server ended the sequence's stream")
        result = stream_result(answer)
        return {name: result.as_numpy(name) for name in _output_names(spec, step)}

    async def close(self) -> None:
        if self._stream is None:
            return
        if self._owed:
            self._stream.cancel()  # cut short while the server held a request: dropped (RST_STREAM CANCEL)
        else:
            self._stream.done_writing()  # every answer read: the server ends the stream itself


def _short(values: Any) -> str:
    if values is None:
        return "None"
    flat = np.asarray(values).reshape(-1)
    head = ", ".join(repr(v) for v in flat[:6])
    return f"[{head}{', ...' if flat.size > 6 else ''}] (shape {list(np.asarray(values).shape)})"
