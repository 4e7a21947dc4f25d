"""Scenario plans are data: drawn from a seeded generator, they replay exactly, and each step
carries the answer (or the error) the server must give."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import ScenariosSection
from model_repo_gen import RepoOptions, build_specs
from model_repo_gen.options import HEALTHY_MODELS
from workers.plans import (
    DEADLINE_ERROR,
    NO_START_ERROR,
    PLANNERS,
    IdSource,
    PlanContext,
    PlanError,
    echo_pool,
    large_tensor_pool_bytes,
    pool_size,
)
from workers.worker import ScenarioDraw

SPECS = build_specs(RepoOptions(models=HEALTHY_MODELS, zero_delay_ms=1000))
SETTINGS = ScenariosSection(timeout_input_bytes=1024, large_tensor_bytes=4096)


def _context(seed: int, models=SPECS, worker: int = 0) -> PlanContext:
    return PlanContext(np.random.default_rng(seed), SETTINGS, IdSource(worker * 1_048_576 + 1, 1_048_576, worker),
                       models)


def _fingerprint(plan) -> list:
    return [(s.model, s.sequence_id, s.start, s.end, s.values.tobytes() if s.values.dtype != object else
             tuple(s.values.reshape(-1)), s.expect_error) for s in plan.steps]


@pytest.mark.parametrize("scenario", sorted(PLANNERS))
def test_same_seed_same_plans(scenario: str) -> None:
    a, b = _context(42), _context(42)
    first = [_fingerprint(PLANNERS[scenario](a)) for _ in range(20)]
    again = [_fingerprint(PLANNERS[scenario](b)) for _ in range(20)]
    assert first == again
    other = [_fingerprint(PLANNERS[scenario](_context(43))) for _ in range(20)]
    if scenario not in ("timeout", "sequence_no_start"):  # these draw little besides the model
        assert first != other


def test_sequence_steps_expect_the_running_sum() -> None:
    ctx = _context(1)
    for _ in range(50):
        plan = PLANNERS["sequence_valid"](ctx)
        steps = plan.steps
        assert steps[0].start and steps[-1].end and not any(s.start for s in steps[1:])
        spec = next(s for s in SPECS if s.name == steps[0].model)
        dtype = np.float32 if spec.inputs[0].datatype == "FP32" else np.int32
        total = dtype(0)
        for step in steps:
            total = dtype(total + step.values.reshape(-1)[0])
            assert step.expect.reshape(-1)[0] == total
        assert plan.deadline_s == SETTINGS.sequence_deadline


def test_two_sequence_scenarios_send_both_sequences_on_one_id() -> None:
    ctx = _context(3)
    for name in ("sequence_valid_valid", "sequence_valid_no_end"):
        plan = PLANNERS[name](ctx)
        starts = [i for i, s in enumerate(plan.steps) if s.start]
        assert len(starts) == 2 and len({s.sequence_id for s in plan.steps}) == 1
        ends = [s.end for s in plan.steps]
        assert ends[starts[1] - 1]  # the first sequence ended before the second started
        assert ends[-1] == (name == "sequence_valid_valid")
    assert PLANNERS["sequence_valid_no_end"](ctx).left_open


def test_negative_scenarios_expect_the_servers_errors() -> None:
    ctx = _context(5)
    refused = PLANNERS["sequence_no_start"](ctx).steps
    assert len(refused) == 1 and not refused[0].start and refused[0].expect_error == NO_START_ERROR
    timeout = PLANNERS["timeout"](ctx).steps[0]
    assert timeout.expect_error == DEADLINE_ERROR and timeout.timeout_s == SETTINGS.timeout_client_deadline
    assert timeout.values.nbytes == SETTINGS.timeout_input_bytes


def test_ids_stay_in_the_workers_block_and_string_models_get_strings() -> None:
    ids = IdSource(base=5 * 1000 + 1, block=1000, worker_id=5)
    string_spec = next(s for s in SPECS if s.name == "sequence_string_int32")
    int_spec = next(s for s in SPECS if s.name == "sequence_int32")
    taken = [ids.take(int_spec) for _ in range(2500)]
    assert min(taken) == 5001 and max(taken) == 6000  # wraps inside its own block
    assert ids.take(string_spec).startswith("w5-")


def test_a_scenario_without_its_model_is_a_startup_error() -> None:
    only_identity = [s for s in SPECS if s.kind == "identity"]
    with pytest.raises(PlanError, match="needs a sequence model"):
        PLANNERS["sequence_valid"](_context(1, only_identity))
    with pytest.raises(PlanError, match="zero model"):
        PLANNERS["timeout"](_context(1, only_identity))


def test_scenario_draw_is_rng_choice_without_its_cost() -> None:
    """The lanes' draw takes the same single uniform number as rng.choice(p=...) and lands on the
    same index, so a seed replays the scenario sequence it always did."""
    probabilities = np.array([60, 0, 10, 1, 120, 30], dtype=float)
    probabilities /= probabilities.sum()
    draw = ScenarioDraw(probabilities)
    ours, theirs = np.random.default_rng(11), np.random.default_rng(11)
    drawn = [draw(ours) for _ in range(5000)]
    assert drawn == [int(theirs.choice(len(probabilities), p=probabilities)) for _ in range(5000)]
    assert 1 not in drawn and set(drawn) == {0, 2, 3, 4, 5}


# -- input pools of the identity and large_tensor scenarios: made once per worker, sent again and again --
def _pooled_context(seed: int = 3, ids: IdSource | None = None, models=SPECS, **settings: int) -> PlanContext:
    knobs = {"large_tensor_bytes": 4096, **settings}
    return PlanContext(np.random.default_rng(seed), ScenariosSection(**knobs), ids or IdSource(1, 1000, 0), models)


def _steps(ctx: PlanContext, scenario: str, plans: int = 300) -> list:
    return [step for _ in range(plans) for step in PLANNERS[scenario](ctx).steps]


def _input_pools(ctx: PlanContext) -> list[tuple[np.ndarray, ...]]:
    """The input pools among what the worker's lanes share (the prebuilt plans are there too)."""
    return [pool for pool in ctx.ids.pools.values() if isinstance(pool[0], np.ndarray)]


@pytest.mark.parametrize("scenario", ["identity", "large_tensor"])
def test_echo_steps_send_pooled_arrays_marked_constant(scenario: str) -> None:
    ctx = _pooled_context()
    steps = _steps(ctx, scenario)
    assert all(s.constant_input and s.expect is s.values for s in steps)  # an echo: what goes comes back
    assert all(s.prebuilt for s in steps) and len({id(s) for s in steps}) < len(steps)  # the same few, again
    assert not any(s.values.flags.writeable for s in steps)  # shared by every request: nobody may change one
    pooled = {id(a) for pool in _input_pools(ctx) for a in pool}
    assert {id(s.values) for s in steps} <= pooled  # the very arrays of the pools, none made per request
    sent: dict[tuple, set[int]] = {}
    for s in steps:
        sent.setdefault((s.values.dtype.str, s.values.shape), set()).add(id(s.values))
    assert max(len(arrays) for arrays in sent.values()) > 1  # more than one distinct input per pool
    for pool in _input_pools(ctx):
        assert len(pool) == SETTINGS.input_pool  # 8 by default: all fit the bytes
        if pool[0].dtype != object:  # eight different inputs, not one eight times
            assert len({a.tobytes() for a in pool}) == len(pool)


def test_a_pool_holds_input_pool_inputs_within_its_bytes_one_at_least() -> None:
    assert pool_size(8, 64 << 20, 4 << 20) == 8 and pool_size(8, 9 << 20, 4 << 20) == 2
    assert pool_size(8, 1, 4 << 20) == 1 and pool_size(3, 1 << 30, 0) == 3
    fp32 = [s for s in SPECS if s.name == "identity_fp32"]
    for wanted, cap, count in ((3, 1 << 20, 3), (8, 3 * 4096, 3), (8, 1, 1)):
        ctx = _pooled_context(models=fp32, input_pool=wanted, input_pool_bytes=cap)
        sent = {id(s.values) for s in _steps(ctx, "large_tensor", 100)}
        assert len(sent) == count, (wanted, cap)
        assert large_tensor_pool_bytes(fp32, 4096, wanted, cap) == count * 4096
    both = [s for s in SPECS if s.name in ("identity_fp32", "identity_nobatch_int32")]
    ctx = _pooled_context(models=both, input_pool_bytes=4 * 4096)  # two pools share the bytes: two inputs each
    assert len({id(s.values) for s in _steps(ctx, "large_tensor", 200)}) == 4
    assert large_tensor_pool_bytes(both, 4096, 8, 4 * 4096) == 4 * 4096
    pool = echo_pool(_pooled_context(input_pool=5), "BYTES", (1, 64))  # BYTES: object arrays, pooled too
    assert len(pool) == 5 and all(a.dtype == object and a.shape == (1, 64) for a in pool)


def test_a_workers_lanes_share_its_pools_and_each_lane_replays_alone() -> None:
    """Every lane's context holds the worker's IdSource: one pool per worker, whose contents do not
    depend on which lane made it, nor does any lane's sequence of plans."""
    def fingerprints(ctx: PlanContext) -> list:
        return [_fingerprint(PLANNERS[name](ctx)) for name in ("identity", "large_tensor") * 40]

    alone = fingerprints(_pooled_context(5))
    ids = IdSource(1, 1000, 0)
    other_lane = _pooled_context(6, ids)
    fingerprints(other_lane)  # makes the pools first
    lane = _pooled_context(5, ids)
    assert fingerprints(lane) == alone
    pools = dict(ids.pools)
    _steps(other_lane, "identity", 200)
    _steps(lane, "identity", 200)
    assert all(ids.pools[key] is pool for key, pool in pools.items())  # made once, never again
    other_worker = _pooled_context(5, IdSource(1001, 1000, 1))
    assert fingerprints(other_worker) != alone  # another worker: the same draws, other inputs
