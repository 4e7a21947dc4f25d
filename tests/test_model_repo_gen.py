"""The generator without a server: every name builds, configs parse back and carry the knobs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from model_repo_gen import (
    ALL_MODELS,
    FAULTY_MODELS,
    HEALTHY_MODELS,
    ONNX_MODELS,
    TORCH_MODELS,
    FaultOptions,
    RepoOptions,
    build_specs,
    generate_repository,
    render_config,
)


def _parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_every_model_builds_and_its_config_parses_back() -> None:
    specs = build_specs(RepoOptions(models=ALL_MODELS))
    assert [s.name for s in specs] == list(ALL_MODELS)
    for spec in specs:
        config = _parse(render_config(spec))
        assert config.name == spec.name
        assert config.max_batch_size == spec.max_batch_size
        assert [i.name for i in config.input] == [t.name for t in spec.inputs]
        assert [o.name for o in config.output] == [t.name for t in spec.outputs]
        assert config.instance_group[0].count == spec.instance_count


def test_knobs_reach_the_configs() -> None:
    options = RepoOptions(
        models=("identity_fp32", "sequence_int32", "sequence_nobatch_fp32", "zero_fp32", "zero_slow_fp32",
                "decoupled_int32", "sequence_string_int32"),
        instance_count=3, max_batch_size=16, sequence_max_batch_size=4, sequence_strategy="oldest",
        sequence_idle_timeout=2.5, zero_delay_ms=150, slow_zero_delay_ms=900, instance_kind="auto",
    )
    configs = {s.name: _parse(render_config(s)) for s in build_specs(options)}
    identity = configs["identity_fp32"]
    assert identity.max_batch_size == 16 and identity.HasField("dynamic_batching")
    assert identity.instance_group[0].count == 3
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(identity.instance_group[0].kind) == "KIND_AUTO"
    seq = configs["sequence_int32"]
    assert seq.max_batch_size == 4
    assert seq.sequence_batching.max_sequence_idle_microseconds == 2_500_000
    assert seq.sequence_batching.HasField("oldest")
    assert [c.name for c in seq.sequence_batching.control_input] == ["START", "END", "READY", "CORRID"]
    assert configs["sequence_nobatch_fp32"].max_batch_size == 0
    # STRING CORRID controls fail every request on Triton 2.51: the string-id model has none.
    assert "CORRID" not in [c.name for c in configs["sequence_string_int32"].sequence_batching.control_input]
    assert [c.name for c in configs["sequence_string_int32"].sequence_batching.control_input] == [
        "START", "END", "READY"]
    assert configs["zero_fp32"].parameters["execute_delay_ms"].string_value == "150"
    assert configs["zero_slow_fp32"].parameters["execute_delay_ms"].string_value == "900"
    assert configs["decoupled_int32"].model_transaction_policy.decoupled


def test_defaults_direct_strategy_delays_and_state_expiry() -> None:
    options = RepoOptions(models=("identity_nobatch_int32", "sequence_int32", "sequence_nobatch_int32",
                                  "identity_bytes"), execute_delay_ms=12.5, sequence_idle_timeout=3,
                          dynamic_batching=False)
    configs = {s.name: _parse(render_config(s)) for s in build_specs(options)}
    nobatch = configs["identity_nobatch_int32"]
    assert nobatch.max_batch_size == 0 and not nobatch.HasField("dynamic_batching")
    assert list(nobatch.input[0].dims) == [-1]
    assert not configs["identity_bytes"].HasField("dynamic_batching")  # dynamic_batching=False reaches it
    assert model_config_pb2.DataType.Name(configs["identity_bytes"].input[0].data_type) == "TYPE_STRING"
    assert nobatch.parameters["execute_delay_ms"].string_value == "12.5"
    seq = configs["sequence_int32"]
    assert seq.sequence_batching.HasField("direct")
    assert seq.sequence_batching.max_sequence_idle_microseconds == 3_000_000
    assert seq.parameters["execute_delay_ms"].string_value == "12.5"
    # The model forgets a sequence after twice the server's idle timeout + 1 s (+ queueing behind delays).
    assert float(seq.parameters["state_ttl_s"].string_value) == 2 * 3 + 1 + 2 * 0.0125
    assert seq.parameters["expire_state"].string_value == "1"
    corrid = next(c for c in seq.sequence_batching.control_input if c.name == "CORRID")
    assert model_config_pb2.DataType.Name(corrid.control[0].data_type) == "TYPE_UINT64"
    assert not configs["sequence_nobatch_int32"].sequence_batching.HasField("direct")  # nobatch: server default


def test_options_out_of_bounds_are_refused_with_their_name() -> None:
    with pytest.raises(ValueError, match="instance_count = 0: must be 1 or more"):
        build_specs(RepoOptions(instance_count=0))
    with pytest.raises(ValueError, match="faults.wrong_every = 0"):
        build_specs(RepoOptions(faults=FaultOptions(wrong_every=0)))
    with pytest.raises(ValueError, match="sequence_strategy = 'newest'"):
        build_specs(RepoOptions(sequence_strategy="newest"))


def test_fault_knobs_and_hang_gets_two_instances() -> None:
    options = RepoOptions(models=FAULTY_MODELS, instance_count=1,
                          faults=FaultOptions(leak_bytes_per_request=4096, hang_after_requests=7, wrong_every=3))
    configs = {s.name: _parse(render_config(s)) for s in build_specs(options)}
    assert configs["leak_fp32"].parameters["leak_bytes_per_request"].string_value == "4096"
    assert configs["leak_fp32"].parameters["fault"].string_value == "leak"
    assert configs["hang_fp32"].parameters["hang_after_requests"].string_value == "7"
    assert configs["hang_fp32"].instance_group[0].count == 2  # one hangs, one goes on
    assert configs["wrong_fp32"].parameters["wrong_every"].string_value == "3"
    assert configs["sequence_noexpire_int32"].parameters["expire_state"].string_value == "0"
    # The hanging instance must exist: hang_instance=3 needs four instances.
    spec = build_specs(RepoOptions(models=("hang_fp32",), faults=FaultOptions(hang_instance=3)))[0]
    assert spec.instance_count == 4


def test_ratchet_deadlock_drift_and_fd_leak_models_carry_their_knobs_and_shapes() -> None:
    faults = FaultOptions(ratchet_bytes_per_request=8192, ratchet_period=4.0, ratchet_free_fraction=0.25,
                          deadlock_after_requests=9, queue_drift_service_ms=40.0, compute_drift_base_ms=5.0,
                          compute_drift_ms_per_minute=30.0, compute_drift_onset=65.0, fd_leak_every=3)
    specs = build_specs(RepoOptions(models=("ratchet_fp32", "deadlock_fp32", "queue_drift_fp32", "compute_drift_fp32",
                                            "fd_leak_fp32"), instance_count=2, faults=faults))
    texts = {s.name: render_config(s) for s in specs}
    configs = {name: _parse(text) for name, text in texts.items()}
    for name, text in texts.items():
        assert text.count('key: "fault"') == 1, name  # said once, whoever writes it
        assert configs[name].parameters["fault"].string_value == name.rsplit("_", 1)[0]
    ratchet = configs["ratchet_fp32"].parameters
    assert (ratchet["ratchet_bytes_per_request"].string_value, ratchet["ratchet_period_s"].string_value,
            ratchet["ratchet_free_fraction"].string_value) == ("8192", "4", "0.25")
    deadlock = configs["deadlock_fp32"]
    assert deadlock.parameters["deadlock_after_requests"].string_value == "9"
    assert deadlock.instance_group[0].count == 2  # every instance deadlocks: as many as asked for
    # One instance, one request at a time, the service time as its delay: no batching or second
    # instance can absorb a load above 1000 / 40 = 25 requests/s.
    queue = configs["queue_drift_fp32"]
    assert (queue.max_batch_size, queue.HasField("dynamic_batching"), queue.instance_group[0].count) == (0, False, 1)
    assert queue.parameters["execute_delay_ms"].string_value == "40"
    compute = configs["compute_drift_fp32"]
    assert compute.instance_group[0].count == 4  # instances to spare: its queue stays flat
    assert compute.parameters["execute_delay_ms"].string_value == "5"
    assert (compute.parameters["drift_ms_per_minute"].string_value,
            compute.parameters["drift_onset_s"].string_value) == ("30", "65")
    assert configs["fd_leak_fp32"].parameters["fd_leak_every"].string_value == "3"


def test_implicit_state_configs_for_onnx_and_torch() -> None:
    for spec in build_specs(RepoOptions(models=ONNX_MODELS + TORCH_MODELS)):
        config = _parse(render_config(spec))
        assert config.platform in ("onnxruntime_onnx", "pytorch_libtorch")
        if spec.is_sequence:
            state = config.sequence_batching.state[0]
            assert (state.input_name, state.output_name) == ("INPUT_STATE", "OUTPUT_STATE")


@pytest.mark.parametrize("module,model", [("onnx", "onnx_identity_fp32"), ("torch", "libtorch_sequence_int32")])
def test_missing_export_package_is_named_and_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                module: str, model: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import of it now fails, as when not installed
    with pytest.raises(ValueError, match=rf"{model} needs the '{module}' package.*\[{module}\]"):
        generate_repository(tmp_path / "repo", RepoOptions(models=("identity_fp32", model)))
    assert not (tmp_path / "repo").exists()


def test_unknown_model_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ValueError, match="unknown model 'identity_f32'.*'identity_fp32'"):
        build_specs(RepoOptions(models=("identity_f32",)))


def test_generate_twice_replaces_and_prunes(tmp_path: Path) -> None:
    generate_repository(tmp_path, RepoOptions(models=("identity_fp32", "sequence_int32")))
    generate_repository(tmp_path, RepoOptions(models=("identity_fp32",), instance_count=5))
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["identity_fp32"]
    assert "count: 5" in (tmp_path / "identity_fp32" / "config.pbtxt").read_text()
    assert (tmp_path / "identity_fp32" / "1" / "model.py").exists()


def test_a_foreign_directory_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not written by model_repo_gen"):
        generate_repository(tmp_path, RepoOptions(models=("identity_fp32",)))
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_cli_writes_lists_and_refuses_bad_input(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "model_repo_gen", *args], capture_output=True, text=True,
                              timeout=60, check=False)

    done = run("--out", str(tmp_path / "r"), "--models", "identity_int32,sequence_fp32,wrong_fp32",
               "--instance-count", "1", "--sequence-strategy", "oldest", "--wrong-every", "7")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "r").iterdir() if p.is_dir()) == [
        "identity_int32", "sequence_fp32", "wrong_fp32"]
    assert "identity_int32" in done.stdout and "wrong_fp32" in done.stdout
    wrong = _parse((tmp_path / "r" / "wrong_fp32" / "config.pbtxt").read_text())
    assert wrong.parameters["wrong_every"].string_value == "7"
    assert _parse((tmp_path / "r" / "sequence_fp32" / "config.pbtxt").read_text()).sequence_batching.HasField("oldest")
    again = run("--out", str(tmp_path / "r"), "--models", "identity_int32")  # regenerating over its own output
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (tmp_path / "r").iterdir() if p.is_dir()) == ["identity_int32"]
    helped = run("--help")
    assert helped.returncode == 0 and "usage:" in helped.stdout
    for flag in ("--instance-count", "--max-batch-size", "--sequence-max-batch-size", "--sequence-strategy",
                 "--sequence-idle-timeout", "--execute-delay-ms", "--zero-delay-ms", "--slow-zero-delay-ms",
                 "--list", "--models", "--wrong-every", "--plateau-time-constant", "--ratchet-period",
                 "--ratchet-free-fraction", "--deadlock-after-requests", "--queue-drift-service-ms",
                 "--compute-drift-onset", "--fd-leak-every"):
        assert flag in helped.stdout, flag
    listing = run("--list").stdout
    assert all(name in listing for name in HEALTHY_MODELS + FAULTY_MODELS)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    out = str(tmp_path / "x")
    for bad, says in ((["--out", out, "--models", "nosuch"], "unknown model 'nosuch'"),
                      (["--out", out, "--instance-count", "0"], "--instance-count 0: must be 1 or more"),
                      (["--out", out, "--sequence-idle-timeout", "-1"], "--sequence-idle-timeout -1"),
                      (["--out", out, "--instance-count", "two"], "invalid int value: 'two'"),
                      (["--out", out, "--sequence-strategy", "newest"], "invalid choice: 'newest'"),
                      (["--out", out, "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
                      (["--models", "identity_fp32"], "--out DIR is required"),
                      (["--out", str(foreign)], "not written by model_repo_gen")):
        done = run(*bad)
        assert done.returncode == 2, bad
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
        assert says in done.stderr, (says, done.stderr)
    assert not (tmp_path / "x").exists() and (foreign / "keep.txt").read_text() == "mine"
