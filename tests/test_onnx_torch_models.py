"""ONNX and TorchScript variants, checked with onnxruntime and torch themselves (the bundled
server has only the python backend, so it cannot load them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_repo_gen import RepoOptions, build_spec, generate_repository

OPTIONS = RepoOptions(max_batch_size=8, sequence_max_batch_size=2)


def _accumulate(run, steps: list[tuple[list[int], list[int], list[int]]]) -> list[list[int]]:
    """Feed (INPUT, START, READY) per step for a batch, carrying the state as Triton would."""
    state = np.zeros((len(steps[0][0]), 1), np.int32)
    outputs = []
    for values, start, ready in steps:
        col = lambda xs: np.array(xs, np.int32).reshape(-1, 1)  # noqa: E731
        out, state = run(col(values), col(start), col(ready), state)
        outputs.append(out.reshape(-1).tolist())
    return outputs


# Two sequences side by side in one batch; step 3 restarts the first; step 4 is a READY=0 filler
# for the second slot, which must keep its sum.
STEPS = [([5, 100], [1, 1], [1, 1]), ([7, 1], [0, 0], [1, 1]), ([2, 1000], [1, 0], [1, 1]),
         ([3, 9999], [0, 0], [1, 0]), ([1, 4], [0, 0], [1, 1])]
EXPECTED = [[5, 100], [12, 101], [2, 1101], [5, 0], [6, 1105]]


def test_onnx_identity_and_accumulator(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (extra 'onnx')")
    pytest.importorskip("onnx", reason="onnx not installed (extra 'onnx')")
    generate_repository(tmp_path, RepoOptions(models=("onnx_identity_fp32", "onnx_sequence_int32")))
    identity = ort.InferenceSession(str(tmp_path / "onnx_identity_fp32" / "1" / "model.onnx"))
    for shape in ((1, 16), (3, 5), (8, 1000)):
        data = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        assert np.array_equal(identity.run(["OUTPUT0"], {"INPUT0": data})[0], data)
    seq = ort.InferenceSession(str(tmp_path / "onnx_sequence_int32" / "1" / "model.onnx"))

    def run(values, start, ready, state):
        return seq.run(["OUTPUT", "OUTPUT_STATE"], {"INPUT": values, "START": start, "READY": ready,
                                                     "INPUT_STATE": state})

    assert _accumulate(run, STEPS) == EXPECTED


def test_onnx_export_is_deterministic(tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="onnx not installed (extra 'onnx')")
    from model_repo_gen.onnx_models import export_onnx_model

    spec = build_spec("onnx_sequence_int32", OPTIONS)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert export_onnx_model(spec, tmp_path / "a").read_bytes() == export_onnx_model(spec, tmp_path / "b").read_bytes()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.load: what Triton's libtorch backend uses
def test_torchscript_identity_and_accumulator(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="torch not installed (extra 'torch')")
    generate_repository(tmp_path, RepoOptions(models=("libtorch_identity_fp32", "libtorch_sequence_int32")))
    identity = torch.jit.load(str(tmp_path / "libtorch_identity_fp32" / "1" / "model.pt"))
    data = torch.randn(4, 33)
    assert torch.equal(identity(data), data)
    seq = torch.jit.load(str(tmp_path / "libtorch_sequence_int32" / "1" / "model.pt"))

    def run(values, start, ready, state):
        out, new_state = seq(*(torch.from_numpy(x) for x in (values, start, ready, state)))
        return out.numpy(), new_state.numpy()

    assert _accumulate(run, STEPS) == EXPECTED


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError("No module named 'onnx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ImportError, match=r"onnx_identity_fp32 needs the 'onnx' package.*\[onnx\]"):
        generate_repository(tmp_path, RepoOptions(models=("onnx_identity_fp32",)))
