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
