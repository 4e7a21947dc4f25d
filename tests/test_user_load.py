"""Users' own models: a repository of theirs served beside the generated one, driven by
[[load]] entries with perf_analyzer-format input data whose validation_data is checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.config import ScenariosSection
from model_repo_gen import RepoOptions, generate_repository
from model_repo_gen.spec import ModelSpec, TensorSpec
from workers.plans import IdSource, PlanContext, below
from workers.user_load import ResolvedLoad, input_pool, plan_user

pytestmark = pytest.mark.timeout(200)
ROOT = Path(__file__).resolve().parents[1]
ZERO_WEIGHTS = "\n".join(f"{k} = 0" for k in ("timeout", "crashing_client", "sequence_no_end", "sequence_valid_no_end",
                                               "sequence_valid_valid", "sequence_no_start", "sequence_valid",
                                               "steady_load", "identity", "large_tensor", "streaming"))


def _setup(tmp_path: Path, expected_first: list[int], load_extra: str = "") -> Path:
    user_repo = tmp_path / "user_repo"
    generate_repository(user_repo, RepoOptions(models=("identity_int32",), instance_count=1))
    data = {
        "data": [{"INPUT0": {"content": [1, 2, 3, 4], "shape": [4]}}, {"INPUT0": [5, 6, 7, 8]}],
        "validation_data": [{"OUTPUT0": expected_first}, {"OUTPUT0": [5, 6, 7, 8]}],
    }
    (tmp_path / "data.json").write_text(json.dumps(data))
    config = tmp_path / "user.toml"
    config.write_text(f"""
[run]
duration = "6s"
results_dir = "{tmp_path / 'results'}"
[server]
model_repository = "{user_repo}"
startup_timeout = "90s"
[models]
models = []
[workers]
count = 1
[scenarios.weights]
{ZERO_WEIGHTS}
[[load]]
model = "identity_int32"
inputs = [{{ name = "INPUT0", shape = [4] }}]
data = "data.json"
batch_size = 2
{load_extra}
""")
    return config


def _run(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", "--config", str(config)], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)


def test_user_model_is_driven_and_validated(tmp_path: Path) -> None:
    done = _run(_setup(tmp_path, [1, 2, 3, 4]))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "load:identity_int32: inputs INPUT0 INT32[2, 4], data data.json, 2 validation rows" in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("load:identity_int32"))
    failures, tests = (int(x) for x in row.split("|")[1:3])
    assert failures == 0 and tests > 20


def test_a_wrong_expected_value_is_a_validation_failure(tmp_path: Path) -> None:
    done = _run(_setup(tmp_path, [1, 2, 3, 5]))
    assert done.returncode == 1, done.stdout + done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("load:identity_int32"))
    assert int(row.split("|")[1]) > 0
    assert "OUTPUT0" in done.stdout and "!= expected" in done.stdout and "verdict: FAIL" in done.stdout


@pytest.mark.parametrize("change,message", [
    (("identity_int32\"\ninputs", "no_such_model\"\ninputs"), "model 'no_such_model' is not ready on the server"),
    (('name = "INPUT0"', 'name = "INPUT9"'), "no input 'INPUT9'"),
])
def test_missing_model_or_input_is_a_clear_startup_error(tmp_path: Path, change: tuple[str, str],
                                                          message: str) -> None:
    config = _setup(tmp_path, [1, 2, 3, 4])
    config.write_text(config.read_text().replace(*change))
    done = _run(config)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_an_entry_brings_its_own_protocol_shared_memory_and_schedule(tmp_path: Path) -> None:
    """HTTP with system shared memory at a constant 20 plans/s, beside the workers' defaults."""
    extra = 'protocol = "http"\nshm = "system"\nload = "constant"\nrate = 20.0'
    done = _run(_setup(tmp_path, [1, 2, 3, 4], extra))
    assert done.returncode == 0, done.stdout + done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("load:identity_int32"))
    failures, tests = (int(x) for x in row.split("|")[1:3])
    # 20/s on its own schedule for the 6 s run, which counts from the workers' first heartbeats (the
    # load starts up to about 2 s before the coordinator has heard from every worker)
    assert failures == 0 and 100 <= tests <= 180, tests


@pytest.mark.parametrize("expected_first,status", [([1, 2, 3, 4], 0), ([1, 2, 3, 5], 1)])
def test_answers_land_in_output_slots_and_are_checked_there(tmp_path: Path, expected_first: list[int],
                                                            status: int) -> None:
    """output_bytes (perf_analyzer's --output-shared-memory-size): the server writes each answer into
    a slot of the worker's; the validation rows are checked against it (a wrong one still fails)."""
    done = _run(_setup(tmp_path, expected_first, 'shm = "system"\noutput_bytes = 32'))  # 2 x 4 INT32
    assert done.returncode == status, done.stdout + done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("load:identity_int32"))
    failures, tests = (int(x) for x in row.split("|")[1:3])
    assert tests > 20 and (failures == 0) == (status == 0), (failures, tests)


# -- input pools: made once, sent again and again -------------------------------------------------
def _pool_context(**settings: int) -> PlanContext:
    return PlanContext(np.random.default_rng(7), ScenariosSection(**settings), IdSource(1, 1000, 0), ())


def _user_load(data: str, elements: int, rows: tuple = ()) -> ResolvedLoad:
    spec = ModelSpec("mine", "user", "python", 0, (TensorSpec("IN", "FP32", (elements,)),),
                     (TensorSpec("OUT", "FP32", (elements,)),), 1, "cpu")
    return ResolvedLoad("load:mine", spec, data, rows, (), False)


def _sent(ctx: PlanContext, load: ResolvedLoad, plans: int = 200) -> list:
    return [step for _ in range(plans) for step in plan_user(ctx, load).steps]


def test_a_random_load_draws_from_a_pool_made_once_and_marks_it_constant() -> None:
    steps = _sent(_pool_context(input_pool=8), _user_load("random", 16))
    arrays = {id(step.values): step.values for step in steps}
    assert len(arrays) == 8 and all(step.constant_input for step in steps)  # shm writes each one once
    distinct = {array.tobytes() for array in arrays.values()}
    assert len(distinct) == 8  # eight different inputs, not one sent eight times


def test_a_pool_is_bounded_by_its_bytes_and_zeros_need_one() -> None:
    big = _user_load("random", 1 << 20)  # 4 MiB a request
    assert len({id(s.values) for s in _sent(_pool_context(input_pool_bytes=9 << 20), big, 50)}) == 2
    assert len({id(s.values) for s in _sent(_pool_context(input_pool_bytes=1), big, 10)}) == 1
    zero = {id(s.values) for s in _sent(_pool_context(), _user_load("zero", 16), 50)}
    assert len(zero) == 1


def test_file_rows_are_constant_only_when_they_all_fit_the_pool_bytes() -> None:
    rows = tuple(((("IN", np.full(1024, i, np.float32)),)) for i in range(4))  # 4 KiB each
    load = _user_load("file", 1024, rows)
    assert all(s.constant_input for s in _sent(_pool_context(input_pool_bytes=16 << 10), load, 20))
    assert not any(s.constant_input for s in _sent(_pool_context(input_pool_bytes=8 << 10), load, 20))


def test_a_pool_is_made_once_per_worker_not_once_per_lane() -> None:
    """Every lane's context holds the worker's IdSource: the lanes send the same pooled arrays."""
    ids = IdSource(1, 1000, 0)
    lanes = [PlanContext(np.random.default_rng(seed), ScenariosSection(), ids, ()) for seed in (1, 2)]
    load = _user_load("random", 16)
    first, second = ({id(s.values) for s in _sent(lane, load, 100)} for lane in lanes)
    assert first == second and len(first) == 8


def test_a_single_request_load_sends_prebuilt_plans_drawn_as_its_inputs_were() -> None:
    """A random (or zero) load's requests are a few plans made once per worker, one per pooled
    input, marked prebuilt (the executor keeps what it builds from them); each is picked with the
    same one draw that picked its input, so a run replays exactly from its seed."""
    ctx, replay = _pool_context(input_pool=8), np.random.default_rng(7)
    load = _user_load("random", 16)
    pool = input_pool(ctx, load)
    plans = [plan_user(ctx, load) for _ in range(200)]
    assert len({id(plan) for plan in plans}) == 8  # the same eight plans, sent again and again
    assert all(len(p.steps) == 1 and p.steps[0].prebuilt and p.steps[0].constant_input for p in plans)
    assert [id(p.steps[0].values) for p in plans] == [id(pool[below(replay, len(pool))][0][1]) for _ in plans]
    sequence = ResolvedLoad("load:mine", load.spec, "random", (), (), True)
    assert not any(s.prebuilt for _ in range(20) for s in plan_user(ctx, sequence).steps)  # each sequence is new
