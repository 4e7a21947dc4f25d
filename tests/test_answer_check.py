"""`[workers] validate`: how much of each answer is compared, read in place from shared memory.

Unit tests of the comparison in each mode (answers are views on a real system shared-memory
region, expectations ordinary arrays, as in a worker), the config keys, and one run against the
real server's wrong-answer model with sampled pages."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.config import Config, ConfigError, load_config
from shm import SystemRegion, region_name
from workers.answer_check import PAGE_BYTES, PAGED_MIN_BYTES, VALIDATE_MODES, AnswerCheck
from workers.executor import _mismatch, _same, digest

MIB = 1 << 20


@pytest.fixture
def region() -> Iterator[SystemRegion]:
    """A 16 MiB system shared-memory region, as a worker's output slots live in."""
    made = SystemRegion(region_name(f"testcheck-{os.getpid()}", 0, 0), 16 * MIB)
    try:
        yield made
    finally:
        made.close()


def _answer(region: SystemRegion, want: np.ndarray) -> np.ndarray:
    """`want` written into the region, and the answer as a view on it (no copy), as the server's."""
    got = region.view(0, want.dtype, want.shape)
    np.copyto(got, want)
    return got


def _flip(got: np.ndarray, byte: int) -> None:
    got.view(np.uint8).reshape(-1)[byte] ^= 0x40


def _expected(nbytes: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random(nbytes // 4, dtype=np.float32).reshape(1, -1)


# -- all ---------------------------------------------------------------------------------------
def test_all_finds_one_differing_byte_anywhere_in_16_mib(region: SystemRegion) -> None:
    want = _expected(16 * MIB)
    got = _answer(region, want)
    check = AnswerCheck("all")
    assert _same(got, want, None) and _mismatch([("OUTPUT0", want)], {"OUTPUT0": got}, check) is None
    positions = [0, 1, 4095, 4096, 8 * MIB + 3, 16 * MIB - PAGE_BYTES - 1, 16 * MIB - 1,
                 *np.random.default_rng(5).integers(0, 16 * MIB, 20).tolist()]
    for byte in positions:
        _flip(got, byte)
        assert not _same(got, want), byte
        wrong = _mismatch([("OUTPUT0", want)], {"OUTPUT0": got}, check)
        assert wrong is not None and wrong[0] == "OUTPUT0" and wrong[1] is got, byte
        _flip(got, byte)
    assert _same(got, want)
    assert (check.answers_compared, check.answers_sampled, check.answers_skipped) == (1 + len(positions), 0, 0)


def test_all_through_a_digest_finds_one_differing_byte_and_still_compares_by_value(region: SystemRegion) -> None:
    """A prebuilt step's full check reads only the answer: its digest against the expectation's."""
    want = _expected(4 * MIB, seed=2)
    got = _answer(region, want)
    check = AnswerCheck("all")
    digests = [digest(want)]
    assert digests[0] is not None and _mismatch([("OUTPUT0", want)], {"OUTPUT0": got}, check, digests) is None
    for byte in [0, 4095, 2 * MIB + 1, 4 * MIB - 1, *np.random.default_rng(6).integers(0, 4 * MIB, 10).tolist()]:
        _flip(got, byte)
        wrong = _mismatch([("OUTPUT0", want)], {"OUTPUT0": got}, check, digests)
        assert wrong is not None and wrong[1] is got, byte
        _flip(got, byte)
    zeros = np.zeros((1, MIB // 4), np.float32)
    negative = zeros.copy()
    negative[0, 0] = -0.0  # another digest, the same values
    assert _same(negative, zeros, None, digest(zeros))
    # what a digest is not made for: small tensors (compared as bytes), object and unusual types
    assert digest(zeros[:, :1024]) is None and digest(np.array([b"x"] * 70_000, dtype=np.object_)) is None
    assert digest(np.zeros(70_000, np.complex64)) is None


def test_all_is_the_default_and_equal_by_value() -> None:
    assert AnswerCheck().mode == "all"
    zeros = np.zeros((1, MIB // 4), np.float32)
    negative = zeros.copy()
    negative[0, 0] = -0.0  # bit for bit different, equal by value
    assert _same(negative, zeros) and _same(negative, zeros, AnswerCheck("pages", seed=1))


# -- pages -------------------------------------------------------------------------------------
def test_pages_draws_first_last_and_one_page_from_each_stretch() -> None:
    check = AnswerCheck("pages", pages=16, seed=3)
    nbytes = 4 * MIB + 12  # a partial last page: the tail page ends with the answer
    for _ in range(50):
        offsets = check.page_offsets(nbytes)
        assert offsets is not None and len(offsets) == 18
        assert offsets[:2] == [0, nbytes - PAGE_BYTES]
        pages = [o // PAGE_BYTES for o in offsets[2:]]
        assert all(o % PAGE_BYTES == 0 for o in offsets[2:])
        interior = -(-nbytes // PAGE_BYTES) - 2
        width = interior / 16
        assert all(1 + int(i * width) <= p <= 1 + int((i + 1) * width) for i, p in enumerate(pages)), pages
        assert pages == sorted(set(pages)) and pages[-1] <= interior
    assert check.outputs_sampled == 50


def test_pages_cover_every_page_over_a_run() -> None:
    check = AnswerCheck("pages", pages=16, seed=9)
    nbytes = MIB
    seen: set[int] = set()
    for _ in range(400):
        seen.update(o // PAGE_BYTES for o in check.page_offsets(nbytes))  # type: ignore[union-attr]
    assert seen == set(range(nbytes // PAGE_BYTES))


def test_pages_finds_a_wrong_byte_on_a_drawn_page_and_misses_one_elsewhere(region: SystemRegion) -> None:
    want = _expected(4 * MIB)
    got = _answer(region, want)
    drawn = AnswerCheck("pages", pages=16, seed=42).page_offsets(want.nbytes)  # the same seed draws the same
    assert drawn is not None
    inside = drawn[7] + 1234  # a random page of this draw
    _flip(got, inside)
    check = AnswerCheck("pages", pages=16, seed=42)
    wrong = _mismatch([("OUTPUT0", want)], {"OUTPUT0": got}, check)
    assert wrong is not None and wrong[1] is got
    _flip(got, inside)
    # A page this draw leaves out: sampling, not a full comparison in disguise.
    missed = next(page for page in range(1, want.nbytes // PAGE_BYTES) if page * PAGE_BYTES not in drawn)
    _flip(got, missed * PAGE_BYTES + 5)
    assert _same(got, want, AnswerCheck("pages", pages=16, seed=42))
    assert not _same(got, want, AnswerCheck("all"))


@pytest.mark.parametrize("nbytes", [PAGED_MIN_BYTES + PAGE_BYTES * 64, 4 * MIB, 16 * MIB])
def test_pages_always_finds_a_wrong_byte_on_the_first_or_last_page(region: SystemRegion, nbytes: int) -> None:
    want = _expected(nbytes)
    got = _answer(region, want)
    check = AnswerCheck("pages", pages=4, seed=7)
    for byte in (0, PAGE_BYTES - 1, nbytes - PAGE_BYTES, nbytes - 1):
        _flip(got, byte)
        for _ in range(20):  # whatever the draw
            assert not _same(got, want, check), byte
        _flip(got, byte)
    assert _same(got, want, check)


def test_pages_compares_small_answers_in_full(region: SystemRegion) -> None:
    check = AnswerCheck("pages", pages=16, seed=1)
    for nbytes in (64 << 10, PAGED_MIN_BYTES):
        want = _expected(nbytes)
        got = _answer(region, want)
        assert check.page_offsets(nbytes) is None
        for byte in range(PAGE_BYTES + 17, nbytes, 9 * PAGE_BYTES):
            _flip(got, byte)
            assert _mismatch([("OUTPUT0", want)], {"OUTPUT0": got}, check) is not None, (nbytes, byte)
            _flip(got, byte)
    assert check.answers_sampled == check.outputs_sampled == 0


def test_pages_counts_sampled_answers(region: SystemRegion) -> None:
    want = _expected(MIB)
    got = _answer(region, want)
    small = np.arange(8, dtype=np.float32)
    check = AnswerCheck("pages", seed=2)
    for _ in range(3):
        assert _mismatch([("OUTPUT0", want), ("OUTPUT1", small)], {"OUTPUT0": got, "OUTPUT1": small}, check) is None
    assert _mismatch([("OUTPUT1", small)], {"OUTPUT1": small}, check) is None
    assert (check.answers_compared, check.answers_sampled, check.outputs_sampled) == (4, 3, 3)
    assert check.not_fully_compared == 3


# -- fraction ----------------------------------------------------------------------------------
def test_fraction_compares_about_its_share_and_never_passes_a_wrong_answer_it_compares() -> None:
    want = np.arange(16, dtype=np.float32)
    got = want + 1  # every answer wrong
    check = AnswerCheck("fraction", fraction=0.1, seed=11)
    found = sum(_mismatch([("OUTPUT0", want)], {"OUTPUT0": got}, check) is not None for _ in range(20_000))
    assert found == check.answers_compared  # every answer compared was found wrong
    assert check.answers_compared + check.answers_skipped == 20_000
    assert 1_800 <= check.answers_compared <= 2_200, check.answers_compared  # 0.1 of 20,000, 7 sd either way


def _takes(seed: int, count: int) -> list[bool]:
    check = AnswerCheck("fraction", fraction=0.1, seed=seed)
    return [check.take() for _ in range(count)]


def test_fraction_draws_follow_the_seed() -> None:
    assert _takes(4, 500) == _takes(4, 500)
    assert _takes(4, 500) != _takes(5, 500)
    everything = AnswerCheck("fraction", fraction=1.0, seed=1)
    assert all(everything.take() for _ in range(1000)) and everything.answers_skipped == 0


@pytest.mark.parametrize("kw,text", [({"mode": "some"}, "validate mode"), ({"pages": 0}, "validate_pages"),
                                     ({"fraction": 0.0}, "validate_fraction"),
                                     ({"fraction": 1.5}, "validate_fraction")])
def test_bad_settings_are_refused(kw: dict, text: str) -> None:
    with pytest.raises(ValueError, match=text):
        AnswerCheck(**kw)


# -- config ------------------------------------------------------------------------------------
def _load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "case.toml"
    path.write_text(text)
    return load_config(path, environ={})


def test_config_defaults_and_values(tmp_path: Path) -> None:
    workers = _load(tmp_path, "").workers
    assert (workers.validate, workers.validate_pages, workers.validate_fraction) == ("all", 16, 0.1)
    workers = _load(tmp_path, '[workers]\nvalidate = "pages"\nvalidate_pages = 64\n').workers
    assert (workers.validate, workers.validate_pages) == ("pages", 64)
    assert _load(tmp_path, '[workers]\nvalidate = "fraction"\nvalidate_fraction = 1\n').workers.validate_fraction == 1
    assert VALIDATE_MODES == ("all", "pages", "fraction")


@pytest.mark.parametrize("text,expected", [
    ('[workers]\nvalidate = "page"\n', ["workers.validate", "must be one of: all, pages, fraction",
                                        "did you mean 'pages'"]),
    ("[workers]\nvalidate = true\n", ["workers.validate", "expected a string"]),
    ("[workers]\nvalidate_pages = 0\n", ["workers.validate_pages = 0", "from 1 to 4096"]),
    ("[workers]\nvalidate_pages = 2.5\n", ["workers.validate_pages", "expected an integer"]),
    ("[workers]\nvalidate_fraction = 0\n", ["workers.validate_fraction = 0", "greater than zero"]),
    ("[workers]\nvalidate_fraction = 1.5\n", ["workers.validate_fraction = 1.5", "1 or less"]),
    ('[workers]\nvalidat = "pages"\n', ["unknown key [workers] validat", "did you mean 'validate'"]),
])
def test_bad_config_says_key_value_and_what_is_allowed(tmp_path: Path, text: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text)
    message = str(err.value)
    assert "\n" not in message and message.split(": ", 1)[0].endswith("case.toml")
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


# -- the real server ---------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_pages_mode_still_catches_the_wrong_answer_model(tmp_path: Path) -> None:
    """wrong_fp32 answers every 2nd request with INPUT0 + 1; 1 MiB answers come back into output
    slots in system shared memory and are checked on sampled pages: each wrong one is STATUS_WRONG
    with its text, each right one passes on its pages alone."""
    import tritonclient.grpc as grpcclient

    from model_repo_gen import RepoOptions, generate_repository
    from model_repo_gen.options import FaultOptions
    from shm import ShmPool
    from tests.server_helpers import serve_repository, telemetry_sink
    from workers.executor import Executor
    from workers.plans import Plan, Step
    from workers.sender import TelemetrySender
    from workers.telemetry import KIND_BATCH, STATUS_OK, STATUS_WRONG, RecordBuffer, decode_batch, unpack

    specs = generate_repository(tmp_path / "repo", RepoOptions(models=("wrong_fp32",), instance_count=1,
                                                                dynamic_batching=False,
                                                                faults=FaultOptions(wrong_every=2)))
    [spec] = specs
    rng = np.random.default_rng(3)
    plans = []
    for _ in range(4):
        values = rng.random(MIB // 4, dtype=np.float32)
        values = values.reshape((1, -1) if spec.max_batch_size > 0 else (-1,))
        plans.append(Plan("identity", (Step(model=spec.name, values=values, expect=values),), 30.0))
    with serve_repository(tmp_path / "repo", tmp_path / "work") as running, telemetry_sink(tmp_path) as (endpoint,
                                                                                                         pull):
        sync = grpcclient.InferenceServerClient(running.grpc_url)
        try:
            with ShmPool(sync, f"testcheck-{os.getpid()}", 0, mode="system") as pool:
                sender = TelemetrySender(endpoint, "w", RecordBuffer((spec.name,), ("identity",), "grpc"))
                check = AnswerCheck("pages", pages=4, seed=1)
                executor = Executor(protocol="grpc", grpc_url=running.grpc_url, http_url=running.http_url,
                                    models={spec.name: spec}, model_codes={spec.name: 0}, sender=sender, pool=pool,
                                    check=check)

                async def run() -> list:
                    async with executor:
                        return [await executor.run(plan, 0) for plan in plans]

                outcomes = asyncio.run(run())
                sender.close()
        finally:
            sync.close()
        statuses = []
        while pull.poll(500):
            message = unpack(pull.recv())
            if message.kind == KIND_BATCH:
                statuses += decode_batch(message).columns["status"].tolist()
    assert statuses == [STATUS_OK, STATUS_WRONG, STATUS_OK, STATUS_WRONG]
    assert [o.failed for o in outcomes] == [False, True, False, True]
    assert "OUTPUT0" in outcomes[1].failure and "!= expected" in outcomes[1].failure
    # All four drew pages; the two wrong ones differed there and went on to the full comparison.
    assert (check.answers_compared, check.outputs_sampled, check.answers_sampled, check.answers_skipped) == (4, 4, 2, 0)
