"""The plan executor against the real server: every request plan passes, every request is
recorded, and the count of successes equals the server's own count."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import xxhash
import zmq

from engine.config import ScenariosSection
from model_repo_gen import RepoOptions, generate_repository
from model_repo_gen.options import HEALTHY_MODELS
from shm import ShmPool
from tests.server_helpers import serve_repository, successes, telemetry_sink
from workers.executor import Executor
from workers.host_budget import LARGE_REQUEST_BYTES, HostBudget
from workers.plans import PLANNERS, IdSource, Plan, PlanContext, Step
from workers.sender import TelemetrySender
from workers.telemetry import (
    KIND_BATCH,
    KIND_EVENT,
    STATUS_EXPECTED_ERROR,
    STATUS_NAMES,
    STATUS_OK,
    STATUS_WRONG,
    RecordBuffer,
    decode_batch,
    unpack,
)
from workers.wire.grpc_message import infer_result

pytestmark = pytest.mark.timeout(240)

OPTIONS = RepoOptions(models=HEALTHY_MODELS, instance_count=2, zero_delay_ms=300, slow_zero_delay_ms=600,
                      sequence_idle_timeout=2.0)
SETTINGS = ScenariosSection(timeout_input_bytes=1 << 16, large_tensor_bytes=1 << 20, sequence_length_mean=6,
                            sequence_length_stddev=2, timeout_client_deadline=0.1, sequence_deadline=10.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("executor")
    specs = generate_repository(root / "repo", OPTIONS)
    with serve_repository(root / "repo", root / "work") as running:
        yield running, specs


def _drain(socket: zmq.Socket) -> tuple[list, list]:
    batches, events = [], []
    while socket.poll(500):
        message = unpack(socket.recv())
        (batches if message.kind == KIND_BATCH else events if message.kind == KIND_EVENT else []).append(message)
    return [decode_batch(m) for m in batches], events


async def _run_plans(executor: Executor, plans: list[Plan], codes: dict[str, int]):
    async with executor:
        return [await executor.run(plan, codes[plan.scenario]) for plan in plans]


@pytest.mark.parametrize("protocol,shm_mode", [("grpc", "none"), ("grpc_stream", "none"), ("http", "none"),
                                               ("grpc", "system"), ("http", "system")])
def test_every_request_plan_passes_and_is_counted_exactly(server, tmp_path: Path, protocol: str,
                                                          shm_mode: str) -> None:
    running, specs = server
    scenarios = tuple(sorted(PLANNERS))
    codes = {name: i for i, name in enumerate(scenarios)}
    models = {s.name: s for s in specs}
    model_codes = {name: i for i, name in enumerate(models)}
    ctx = PlanContext(np.random.default_rng(11), SETTINGS, IdSource(1 + 1_048_576 * 3, 1_048_576, 3), specs)
    plans = [PLANNERS[name](ctx) for name in scenarios for _ in range(3)]

    with telemetry_sink(tmp_path) as (endpoint, pull):
        sender = TelemetrySender(endpoint, "worker-3", RecordBuffer(tuple(models), scenarios, protocol))
        before = successes(running.metrics_url)
        pool = None
        if shm_mode != "none":
            sync = (httpclient.InferenceServerClient(running.http_url) if protocol == "http"
                    else grpcclient.InferenceServerClient(running.grpc_url))
            pool = ShmPool(sync, "testrun-exec", 3, mode=shm_mode)
        executor = Executor(protocol=protocol, grpc_url=running.grpc_url, http_url=running.http_url, models=models,
                            model_codes=model_codes, sender=sender, pool=pool)
        outcomes = asyncio.run(_run_plans(executor, plans, codes))
        if pool is not None:
            assert pool.region_names  # the tensors did travel through shared memory
            pool.close()
            sync.close()
        sender.close()
        after = successes(running.metrics_url)
        batches, events = _drain(pull)

    failed = [(o.scenario, o.failure) for o in outcomes if o.failed]
    assert failed == [] and events == []
    status = np.concatenate([b.columns["status"] for b in batches])
    assert len(status) == sum(o.requests for o in outcomes)
    counts = {STATUS_NAMES[k]: int(v) for k, v in zip(*np.unique(status, return_counts=True))}
    assert counts.get("expected_error") == 6, counts  # 3 no-start refusals and 3 deadline expiries
    assert set(counts) <= {"ok", "expected_error"}, counts
    # Nothing lost, nothing invented: every success recorded is one the server counted. A timed-out
    # request still completes on the server later, so it is counted there once it finishes.
    ok = counts["ok"]
    assert ok <= after - before <= ok + 3


def test_a_wrong_answer_is_recorded_as_wrong_with_its_text(server, tmp_path: Path) -> None:
    running, specs = server
    models = {s.name: s for s in specs}
    data = np.arange(4, dtype=np.float32).reshape(1, 4)
    plan = Plan("identity", (Step(model="identity_fp32", values=data, expect=data + 1),), 10.0)
    with telemetry_sink(tmp_path) as (endpoint, pull):
        sender = TelemetrySender(endpoint, "w", RecordBuffer(tuple(models), ("identity",), "grpc"))
        executor = Executor(protocol="grpc", grpc_url=running.grpc_url, http_url=running.http_url, models=models,
                            model_codes={n: i for i, n in enumerate(models)}, sender=sender)
        [outcome] = asyncio.run(_run_plans(executor, [plan], {"identity": 0}))
        sender.close()
        batches, events = _drain(pull)
    assert outcome.failed and "expected" in outcome.failure
    assert batches[0].columns["status"].tolist() == [STATUS_WRONG]
    assert events[0].body["what"] == "scenario_failed" and "identity_fp32 step 0" in events[0].body["text"]


def test_repeated_timeouts_reuse_one_input_slot(server, tmp_path: Path) -> None:
    """The timeout scenario's big constant input is written into shared memory once, not per request
    (a request the client gave up on keeps its slots out of use, so per-request slots would pile up)."""
    running, specs = server
    models = {s.name: s for s in specs}
    settings = ScenariosSection(timeout_input_bytes=8 << 20, timeout_client_deadline=0.1)
    ctx = PlanContext(np.random.default_rng(2), settings, IdSource(1, 1000, 0), specs)
    plans = [PLANNERS["timeout"](ctx) for _ in range(5)]
    sync = grpcclient.InferenceServerClient(running.grpc_url)
    with telemetry_sink(tmp_path) as (endpoint, pull), ShmPool(sync, "testrun-timeouts", 0, mode="system") as pool:
        sender = TelemetrySender(endpoint, "w", RecordBuffer(tuple(models), ("timeout",), "grpc"))
        executor = Executor(protocol="grpc", grpc_url=running.grpc_url, http_url=running.http_url, models=models,
                            model_codes={n: i for i, n in enumerate(models)}, sender=sender, pool=pool)
        outcomes = asyncio.run(_run_plans(executor, plans, {"timeout": 0}))
        sender.close()
        assert not any(o.failed for o in outcomes), [o.failure for o in outcomes]
        assert pool.reserved_bytes < 2 * (8 << 20)  # one 8 MiB input region, not five
    sync.close()


def _three_step_sequence(sequence_id: int) -> Plan:
    """START, one step, END on sequence_int32 (running sums 1, 3, 6)."""
    steps = tuple(Step(model="sequence_int32", values=np.array([[v]], dtype=np.int32), sequence_id=sequence_id,
                       start=i == 0, end=i == 2) for i, v in enumerate((1, 2, 3)))
    return Plan("sequence_valid", steps, 20.0)


def test_a_sequence_the_engine_was_too_late_for_is_abandoned_not_blamed_on_the_server(server, tmp_path: Path) -> None:
    """A starved client (here: a record call that blocks the event loop past the 2 s idle timeout)
    finds its sequence dropped by the server; that is the engine's lateness, not a server error."""
    running, specs = server
    models = {s.name: s for s in specs}
    plan = _three_step_sequence(4242)
    with telemetry_sink(tmp_path) as (endpoint, pull):
        sender = TelemetrySender(endpoint, "w", RecordBuffer(tuple(models), ("sequence_valid",), "grpc"))
        record = sender.record

        def starved_record(*args, **kwargs) -> None:
            record(*args, **kwargs)
            time.sleep(2.5)  # the whole event loop stands still, as under a starved CPU

        sender.record = starved_record  # type: ignore[method-assign]
        executor = Executor(protocol="grpc", grpc_url=running.grpc_url, http_url=running.http_url, models=models,
                            model_codes={n: i for i, n in enumerate(models)}, sender=sender)
        [outcome] = asyncio.run(_run_plans(executor, [plan], {"sequence_valid": 0}))
        sender.close()
        batches, events = _drain(pull)
    assert not outcome.failed and outcome.abandoned and outcome.requests == 1
    assert [b.columns["status"].tolist() for b in batches] == [[STATUS_OK]]  # the one request that was sent
    [late] = [e.body for e in events if e.body["what"] == "engine_late"]
    assert "sequence 4242 of sequence_int32 abandoned" in late["text"] and "2 s idle timeout" in late["text"]


def test_a_sequence_that_idled_out_on_the_way_is_an_expected_refusal(server, tmp_path: Path) -> None:
    """A step sent in time that still reaches the server past the idle timeout (a slow path: here a
    transport that holds the second request 2.5 s before sending it) gets the START-flag refusal the
    server must give; it is counted as expected, said as engine_late, and the sequence goes no further."""
    running, specs = server
    models = {s.name: s for s in specs}
    plan = _three_step_sequence(4343)
    with telemetry_sink(tmp_path) as (endpoint, pull):
        sender = TelemetrySender(endpoint, "w", RecordBuffer(tuple(models), ("sequence_valid",), "grpc"))
        executor = Executor(protocol="grpc", grpc_url=running.grpc_url, http_url=running.http_url, models=models,
                            model_codes={n: i for i, n in enumerate(models)}, sender=sender)
        send = executor._send_unary

        async def late(answer):  # type: ignore[no-untyped-def]
            await asyncio.sleep(2.5)
            return await answer

        def slow_second(spec, step, held, derived):  # type: ignore[no-untyped-def]
            answer, names, slots = send(spec, step, held, derived)
            return (answer if step.start else late(answer)), names, slots

        executor._send_unary = slow_second  # type: ignore[method-assign]
        [outcome] = asyncio.run(_run_plans(executor, [plan], {"sequence_valid": 0}))
        sender.close()
        batches, events = _drain(pull)
    assert not outcome.failed and outcome.abandoned and outcome.requests == 2
    assert [s for b in batches for s in b.columns["status"].tolist()] == [STATUS_OK, STATUS_EXPECTED_ERROR]
    [late] = [e.body for e in events if e.body["what"] == "engine_late"]
    assert "sequence 4343 of sequence_int32 idled out on the way" in late["text"], late
    assert not [e for e in events if e.body["what"] == "scenario_failed"]


def test_a_plan_past_its_deadline_fails_and_the_lane_goes_on(server, tmp_path: Path) -> None:
    """The plan deadline (one watchdog for all plans) fails a plan whose request outlives it: that
    request is recorded as failed, and the task that ran the plan is not cancelled for good."""
    running, specs = server
    models = {s.name: s for s in specs}
    slow = Plan("identity", (Step(model="zero_slow_fp32", values=np.ones(4, np.float32),
                                  expect=np.zeros(4, np.float32)),), 0.15)  # the model takes 600 ms
    fast_data = np.arange(3, dtype=np.float32).reshape(1, 3)
    fast = Plan("identity", (Step(model="identity_fp32", values=fast_data, expect=fast_data),), 10.0)
    with telemetry_sink(tmp_path) as (endpoint, pull):
        sender = TelemetrySender(endpoint, "w", RecordBuffer(tuple(models), ("identity",), "grpc"))
        executor = Executor(protocol="grpc", grpc_url=running.grpc_url, http_url=running.http_url, models=models,
                            model_codes={n: i for i, n in enumerate(models)}, sender=sender)

        async def lane() -> tuple[list, float]:
            began = time.monotonic()
            outcomes = await _run_plans(executor, [slow, fast, slow, fast], {"identity": 0})
            await asyncio.sleep(0.05)  # a cancellation left pending would strike here
            return outcomes, time.monotonic() - began

        outcomes, took = asyncio.run(lane())
        sender.close()
        batches, _ = _drain(pull)
    assert [o.failed for o in outcomes] == [True, False, True, False]
    assert outcomes[0].failure == "plan did not finish within 0.15 s"
    assert took < 1.1  # each slow plan was cut near its deadline (checked every 0.1 s), not after the model's 600 ms
    statuses = [s for b in batches for s in b.columns["status"].tolist()]
    assert statuses.count(STATUS_OK) == 2 and len(statuses) == 4


# -- the identity and large_tensor scenarios' pooled inputs, over system shared memory ---------------
def _pooled_steps(plans: list[Plan]) -> dict[int, np.ndarray]:
    return {id(step.values): step.values for plan in plans for step in plan.steps}


def _successes_of(metrics_url: str, models: list[str], at_least: float = 0.0, wait_s: float = 5.0) -> float:
    """The server's own count of successful requests of `models`; with `at_least`, read again (up to
    `wait_s`) until it gets there: Triton sends an answer before it counts its request (the count is
    taken when the request is released), so a read right after the last answer can miss it."""
    deadline = time.monotonic() + wait_s
    while True:
        text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
        count = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("nv_inference_request_success{")
                    and any(f'model="{name}"' in line for name in models))
        if count >= at_least or time.monotonic() >= deadline:
            return count
        time.sleep(0.05)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_pooled_echo_inputs_are_written_once_answered_right_and_counted(server, tmp_path: Path,
                                                                       protocol: str) -> None:
    """identity and large_tensor send pooled arrays: each is written into a shared-memory slot once
    (the slot still holds it after every request that named it), each answer is checked in its
    output slot and counted as the server counts it, and a wrong expectation is still caught."""
    running, specs = server
    models = {s.name: s for s in specs}
    scenarios = ("identity", "large_tensor")
    settings = ScenariosSection(large_tensor_bytes=1 << 20, input_pool=3)
    ctx = PlanContext(np.random.default_rng(5), settings, IdSource(1, 1000, 0), specs)
    plans = [PLANNERS[name](ctx) for name in scenarios for _ in range(24)]
    pooled = next(s for p in plans for s in p.steps if p.scenario == "large_tensor")
    same_pool = next(p for p in ctx.ids.pools.values() if any(a is pooled.values for a in p))
    other = next(a for a in same_pool if a is not pooled.values)  # of the same shape, another input
    wrong = Plan("large_tensor", (Step(model=pooled.model, values=pooled.values, expect=other,
                                       constant_input=True),), 10.0)
    sync = (httpclient.InferenceServerClient(running.http_url) if protocol == "http"
            else grpcclient.InferenceServerClient(running.grpc_url))
    with telemetry_sink(tmp_path) as (endpoint, pull), ShmPool(sync, f"testrun-pooled-{protocol}", 5) as pool:
        sender = TelemetrySender(endpoint, "w", RecordBuffer(tuple(models), scenarios, protocol))
        executor = Executor(protocol=protocol, grpc_url=running.grpc_url, http_url=running.http_url, models=models,
                            model_codes={n: i for i, n in enumerate(models)}, sender=sender, pool=pool)
        echoes = [s.name for s in specs if s.kind == "identity"]  # no other test's late request counts here
        before = _successes_of(running.metrics_url, echoes)
        outcomes = asyncio.run(_run_plans(executor, [*plans, wrong, *plans[-3:]], {n: i for i, n in
                                                                                   enumerate(scenarios)}))
        after = _successes_of(running.metrics_url, echoes, at_least=before + len(plans) + 4)
        sender.close()
        batches, _ = _drain(pull)
        sent = _pooled_steps(plans)
        assert set(executor._constant_slots) == {(id(pool), key) for key in sent}  # one slot per array, once
        for key, slot in executor._constant_slots.items():
            array = sent[key[1]]
            if array.dtype != object:  # the slot holds the array still: nothing reused it for another tensor
                assert np.array_equal(pool.read(slot, array.dtype, array.shape), array)
    sync.close()
    assert [o.failed for o in outcomes] == [False] * len(plans) + [True] + [False] * 3
    assert "expected" in outcomes[len(plans)].failure
    status = np.concatenate([b.columns["status"] for b in batches]).tolist()
    assert len(status) == sum(o.requests for o in outcomes) == len(plans) + 4
    assert status.count(STATUS_WRONG) == 1 and status.count(STATUS_OK) == len(plans) + 3
    assert after - before == len(plans) + 4  # the wrong one too: the server answered it, the check failed it


def test_a_large_pooled_input_keeps_its_slot_through_the_host_budget(server, tmp_path: Path) -> None:
    """large_tensor inputs of LARGE_REQUEST_BYTES or more take a lease of the host budget; their
    output slots' regions are freed whole when the answer is in, their pooled input slots stay."""
    running, specs = server
    models = {s.name: s for s in specs}
    size = LARGE_REQUEST_BYTES
    settings = ScenariosSection(large_tensor_bytes=size, input_pool=2, input_pool_bytes=2 * size)
    ctx = PlanContext(np.random.default_rng(6), settings, IdSource(1, 1000, 0),
                      [models["identity_fp32"]])  # one pool: two inputs of 32 MiB
    plans = [PLANNERS["large_tensor"](ctx) for _ in range(5)]
    sent = _pooled_steps(plans)
    assert len(sent) == 2
    budget = HostBudget.create(str(tmp_path / "budget"), 1 << 40)
    sync = grpcclient.InferenceServerClient(running.grpc_url)
    with telemetry_sink(tmp_path) as (endpoint, pull), ShmPool(sync, "testrun-pooled-large", 6) as pool:
        sender = TelemetrySender(endpoint, "w", RecordBuffer(tuple(models), ("large_tensor",), "grpc"))
        executor = Executor(protocol="grpc", grpc_url=running.grpc_url, http_url=running.http_url, models=models,
                            model_codes={n: i for i, n in enumerate(models)}, sender=sender, pool=pool,
                            budget=budget)
        outcomes = asyncio.run(_run_plans(executor, plans, {"large_tensor": 0}))
        sender.close()
        _drain(pull)
        assert not any(o.failed for o in outcomes), [o.failure for o in outcomes]
        kept = {slot.region for slot in executor._constant_slots.values()}
        deadline = time.monotonic() + 10.0  # the server may still hold the last output region a moment
        while set(pool.region_names) != kept and time.monotonic() < deadline:
            executor.sweep()
            time.sleep(0.05)
        assert set(pool.region_names) == kept and len(kept) == 2  # the outputs' regions freed, the inputs' kept
        figures = budget.figures()
        assert figures.granted == 5 and figures.in_flight_bytes == 0  # every lease went back
        for (_, key), slot in executor._constant_slots.items():
            assert np.array_equal(pool.read(slot, np.float32, sent[key].shape), sent[key])
    budget.close()
    sync.close()


@pytest.mark.parametrize("protocol,shm_mode", [("grpc", "none"), ("grpc", "system"), ("http", "none"),
                                               ("http", "system")])
def test_prebuilt_steps_are_built_once_and_never_mixed_up(server, tmp_path: Path, protocol: str,
                                                          shm_mode: str) -> None:
    """Prebuilt steps (pooled [[load]] requests) sent again and again, interleaved: every answer is
    each step's own (what the executor keeps per step, its serialized request included, is never
    another step's), a wrong expectation is still caught, and a large inline request is not kept."""
    running, specs = server
    models = {s.name: s for s in specs}
    rng = np.random.default_rng(8)
    arrays = [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(3)]
    steps = [Step(model="identity_fp32", values=a, expect=a, constant_input=True, prebuilt=True) for a in arrays]
    large = rng.standard_normal((1, 32 << 10)).astype(np.float32)  # 128 KiB, above what is kept
    steps.append(Step(model="identity_fp32", values=large, expect=large, constant_input=True, prebuilt=True))
    wrong = Step(model="identity_fp32", values=arrays[0], expect=arrays[1], constant_input=True, prebuilt=True)
    plans = [Plan("identity", (steps[i % len(steps)],), 10.0) for i in range(40)]
    plans.insert(21, Plan("identity", (wrong,), 10.0))
    sync = (httpclient.InferenceServerClient(running.http_url) if protocol == "http"
            else grpcclient.InferenceServerClient(running.grpc_url))
    shm = ShmPool(sync, f"testrun-prebuilt-{protocol}", 7) if shm_mode != "none" else contextlib.nullcontext()
    with telemetry_sink(tmp_path) as (endpoint, pull), shm as pool:
        sender = TelemetrySender(endpoint, "w", RecordBuffer(tuple(models), ("identity",), protocol))
        executor = Executor(protocol=protocol, grpc_url=running.grpc_url, http_url=running.http_url, models=models,
                            model_codes={n: i for i, n in enumerate(models)}, sender=sender, pool=pool)
        outcomes = asyncio.run(_run_plans(executor, plans, {"identity": 0}))
        sender.close()
        _drain(pull)
        derived = {id(step): executor._derived[id(step)] for step in (*steps, wrong)}
    sync.close()
    failed = [i for i, o in enumerate(outcomes) if o.failed]
    assert failed == [21] and "expected" in outcomes[21].failure, [o.failure for o in outcomes if o.failed]
    assert all(d.step is s for s, d in zip((*steps, wrong), derived.values()))
    kept = [len(derived[id(step)].messages) for step in steps]
    # one request per output slot a step was sent with (one in flight: a slot or two, as the
    # next step's constant input may take the slot freed last)
    assert all(1 <= k <= (1 if shm_mode == "none" else 2) for k in kept[:3]), kept
    assert kept[3] == (0 if shm_mode == "none" else 1)  # 128 KiB inline is not kept; in shm it is small


def test_answers_nothing_reads_share_one_output_slot_and_checked_ones_keep_their_own(server, tmp_path: Path) -> None:
    """Over shared memory, requests whose answer nothing compares (a [[load]] of random data) name
    one output slot per size, shared by all (perf_analyzer shares its output regions the same way):
    no slot is taken per request, and each such step is serialized once. A checked request still
    gets a poisoned slot of its own, so a stale answer cannot pass its check."""
    running, specs = server
    models = {s.name: s for s in specs}
    rng = np.random.default_rng(9)
    arrays = [rng.standard_normal((1, 1024)).astype(np.float32) for _ in range(3)]
    unread = [Step(model="identity_fp32", values=a, constant_input=True, prebuilt=True) for a in arrays]
    checked = Step(model="identity_fp32", values=arrays[0], expect=arrays[0], constant_input=True, prebuilt=True)
    plans = [Plan("identity", (unread[i % 3],), 10.0) for i in range(30)] + [Plan("identity", (checked,), 10.0)]
    sync = grpcclient.InferenceServerClient(running.grpc_url)
    echoes = [s.name for s in specs if s.kind == "identity"]
    with telemetry_sink(tmp_path) as (endpoint, pull), ShmPool(sync, "testrun-shared-output", 7) as pool:
        sender = TelemetrySender(endpoint, "w", RecordBuffer(tuple(models), ("identity",), "grpc"))
        executor = Executor(protocol="grpc", grpc_url=running.grpc_url, http_url=running.http_url, models=models,
                            model_codes={n: i for i, n in enumerate(models)}, sender=sender, pool=pool)
        before = _successes_of(running.metrics_url, echoes)

        async def concurrently() -> list:
            async with executor:  # all at once: the shared slot is written by requests in flight together
                return await asyncio.gather(*(executor.run(plan, 0) for plan in plans))

        outcomes = asyncio.run(concurrently())
        after = _successes_of(running.metrics_url, echoes, at_least=before + len(plans))
        sender.close()
        _drain(pull)
        shared = dict(executor._shared_outputs)
        kept = [len(executor._derived[id(step)].messages) for step in unread]
        tensors = [executor._derived[id(step)].tensors for step in (*unread, checked)]
    sync.close()
    assert not [o.failure for o in outcomes if o.failed]
    assert after - before == len(plans)
    assert list(shared) == [(id(pool), arrays[0].nbytes)]  # one slot for every unread answer of this size
    assert kept == [1, 1, 1]  # each unread step serialized once: its tensors never change
    assert all(t is not None for t in tensors[:3]) and tensors[3] is None  # the checked one takes a slot each time


def test_slots_come_back_at_once_from_refusals_and_after_quarantine_from_requests_given_up(
        server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request the server refused (or that never left) is over on the server: its shared-memory
    slots go back to the pool at once, so a stream of failures cannot grow the pool. A request cut
    off by its plan's deadline may still be in the server: its slots wait out the quarantine, and
    then come back too (none is lost)."""
    monkeypatch.setattr("workers.executor.QUARANTINE_S", 0.5)
    running, specs = server
    models = {s.name: s for s in specs}
    wrong_type = np.ones((1, 70_000), np.int32)  # identity_fp32 takes FP32: refused
    refused = [Plan("identity", (Step(model="identity_fp32", values=wrong_type, expect=wrong_type),), 10.0)
               for _ in range(40)]
    cut_off = Plan("identity", (Step(model="zero_slow_fp32", values=np.ones(4, np.float32),
                                     expect=np.zeros(4, np.float32)),), 0.15)  # the model takes 600 ms
    data = np.arange(3, dtype=np.float32).reshape(1, 3)
    fine = Plan("identity", (Step(model="identity_fp32", values=data, expect=data),), 10.0)
    sync = grpcclient.InferenceServerClient(running.grpc_url)
    with telemetry_sink(tmp_path) as (endpoint, pull), ShmPool(sync, "testrun-give-back", 8) as pool:
        sender = TelemetrySender(endpoint, "w", RecordBuffer(tuple(models), ("identity",), "grpc"))
        executor = Executor(protocol="grpc", grpc_url=running.grpc_url, http_url=running.http_url, models=models,
                            model_codes={n: i for i, n in enumerate(models)}, sender=sender, pool=pool)

        async def run() -> tuple[list, int, int, int]:
            async with executor:
                outcomes = [await executor.run(plan, 0) for plan in refused]
                after_refusals = pool.reserved_bytes
                outcomes.append(await executor.run(cut_off, 0))
                quarantined = len(executor._quarantine)
                await asyncio.sleep(0.6)
                outcomes.append(await executor.run(fine, 0))  # its give-back frees what waited out the quarantine
                return outcomes, after_refusals, quarantined, len(executor._quarantine)

        outcomes, after_refusals, quarantined, left = asyncio.run(run())
        sender.close()
        _drain(pull)
        free = sum(len(places) for places in pool._free.values())
    sync.close()
    assert all(o.failed for o in outcomes[:40]) and "INT32" in outcomes[0].failure, outcomes[0].failure
    assert outcomes[40].failure == "plan did not finish within 0.15 s"
    assert not outcomes[41].failed, outcomes[41].failure
    assert after_refusals <= 2 * (1 << 20)  # 40 refusals of 280 KiB inputs: the same slots each time
    assert quarantined == 2  # the cut-off request's input and output slots, out of use for now
    assert left == 0 and executor.retired_slots == 2
    assert free >= 4  # the refused request's slots and the cut-off one's, all back in the pool


def test_a_large_answer_read_in_place_is_compared_every_time(server, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A prebuilt step's large answer over shared memory: a message the same as one read before
    into the same slot is not decoded again (its views are kept), but its data is still compared
    with what is expected, every time: an answer that stops matching is caught at once."""
    running, specs = server
    models = {s.name: s for s in specs}
    values = np.random.default_rng(4).standard_normal((1, 65_536)).astype(np.float32)  # 256 KiB
    expect = values.copy()
    step = Step(model="identity_fp32", values=values, expect=expect, constant_input=True, prebuilt=True)
    decoded = []
    real_infer_result = infer_result
    monkeypatch.setattr("workers.executor.infer_result", lambda answer: decoded.append(1) or real_infer_result(answer))
    sync = grpcclient.InferenceServerClient(running.grpc_url)
    # regions of 256 KiB: the input fills one, the answers' slot has one of its own
    with telemetry_sink(tmp_path) as (endpoint, pull), \
            ShmPool(sync, "testrun-known-answer", 9, region_bytes=values.nbytes) as pool:
        sender = TelemetrySender(endpoint, "w", RecordBuffer(tuple(models), ("identity",), "grpc"))
        executor = Executor(protocol="grpc", grpc_url=running.grpc_url, http_url=running.http_url, models=models,
                            model_codes={n: i for i, n in enumerate(models)}, sender=sender, pool=pool)

        async def run() -> list:
            async with executor:
                outcomes = [await executor.run(Plan("identity", (step,), 10.0), 0) for _ in range(5)]
                # The input, written once, changes in its region: the server's answers stop matching
                # (byte for byte the same messages), what is expected does not.
                (written,) = executor._derived[id(step)].own_outputs[0]
                pool._region(written.slot).view(written.slot.offset, np.float32, values.shape)[0, 40_000] += 1.0
                outcomes += [await executor.run(Plan("identity", (step,), 10.0), 0) for _ in range(2)]
                return outcomes

        outcomes = asyncio.run(run())
        sender.close()
        batches, _ = _drain(pull)
        derived = executor._derived[id(step)]
        kept = len(derived.answers)
        pool.clock = lambda: time.monotonic() + 3600.0  # an hour on: the answers' region has long been idle
        trimmed = executor.trim_pools()
    sync.close()
    assert trimmed == 1 and not derived.answers  # its region given back, and the views of it forgotten
    assert [o.failed for o in outcomes] == [False] * 5 + [True] * 2
    assert "OUTPUT0" in outcomes[5].failure
    statuses = [s for b in batches for s in b.columns["status"].tolist()]
    assert statuses == [STATUS_OK] * 5 + [STATUS_WRONG] * 2
    assert len(decoded) == 1 and kept == 1  # one slot, one message: decoded once
    # compared through the digest of what is expected, made once (256 KiB: above the bytes compare)
    assert derived.digests == [xxhash.xxh3_128_digest(expect)]
    assert derived.own_outputs is not None  # only its output slot taken per request
