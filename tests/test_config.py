"""Config loading: reference defaults, shipped configs, and one clear line for every bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.config import (
    DEFAULT_WEIGHTS,
    LONG_DURATION_S,
    REFERENCE_DURATION_S,
    Config,
    ConfigError,
    config_to_dict,
    format_duration,
    load_config,
    parse_duration,
    resolve_config_path,
    shipped_configs,
)


def _load(tmp_path: Path, text: str, **kw) -> Config:
    path = tmp_path / "case.toml"
    path.write_text(text)
    return load_config(path, environ=kw.pop("environ", {}), **kw)


def _error(tmp_path: Path, text: str, **kw) -> str:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text, **kw)
    message = str(err.value)
    assert "\n" not in message, "config errors are one line"
    assert message.split(": ", 1)[0].endswith("case.toml"), "config errors start with the file"
    return message


def test_defaults_are_the_reference_suites(tmp_path: Path) -> None:
    c = _load(tmp_path, "")
    assert c.run.duration == REFERENCE_DURATION_S == 25000
    assert c.models.instance_count == 2
    assert c.models.sequence_max_batch_size == 2
    assert c.models.sequence_idle_timeout == 7.0
    assert (c.models.zero_delay_ms, c.models.slow_zero_delay_ms) == (1000.0, 10000.0)
    assert c.workers.count == 8 and c.workers.correlation_id_block == 1_048_576
    assert c.scenarios.weights == DEFAULT_WEIGHTS
    assert c.scenarios.weights["sequence_valid"] == 295 and c.scenarios.weights["sequence_no_start"] == 7
    assert c.scenarios.sequence_deadline == 25.0 and c.scenarios.timeout_input_bytes == 1 << 30
    assert 0 <= c.run.seed < 2**31  # drawn, and then part of the resolved config


@pytest.mark.parametrize("name", ["smoke", "long", "very-long", "perf"])
def test_shipped_configs_load(name: str) -> None:
    path = resolve_config_path(name)
    config = load_config(path, environ={})
    assert config.source == path
    assert name in shipped_configs()


def test_shipped_durations() -> None:
    assert load_config(resolve_config_path("long.toml"), environ={}).run.duration == 25000
    assert load_config(resolve_config_path("very-long"), environ={}).run.duration == LONG_DURATION_S
    assert load_config(resolve_config_path("smoke"), environ={}).run.duration == 120


def test_triton_perf_long_applies_only_when_the_file_pins_no_duration(tmp_path: Path) -> None:
    assert _load(tmp_path, "[run]\nseed = 1\n", environ={"TRITON_PERF_LONG": "1"}).run.duration == 480000
    assert _load(tmp_path, '[run]\nduration = "1h"\n', environ={"TRITON_PERF_LONG": "1"}).run.duration == 3600
    assert _load(tmp_path, "", environ={"TRITON_PERF_LONG": "0"}).run.duration == 25000


def test_partial_weights_keep_the_other_defaults(tmp_path: Path) -> None:
    c = _load(tmp_path, "[scenarios.weights]\nidentity = 5\ntimeout = 0\n")
    assert c.scenarios.weights["identity"] == 5 and c.scenarios.weights["timeout"] == 0
    assert c.scenarios.weights["sequence_valid"] == 295


@pytest.mark.parametrize("text,seconds", [
    ("90s", 90), ("7h", 25200), ("6d12h", 561600), ("1h30m", 5400), ("250ms", 0.25), ("2m", 120),
    ("45", 45), (45, 45), (1.5, 1.5), ("1d 2h", 93600),
])
def test_durations_parse(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("seconds", [90, 25200, 561600, 5400, 0.25, 120, 25000, 480000, 3661])
def test_durations_round_trip(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5x", "h", "7h7", "soon", "1.2.3s"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("text,expected", [
    ('[workers]\nprotocl = "grpc"\n', ["unknown key [workers] protocl", "did you mean 'protocol'"]),
    ('[wrokers]\ncount = 1\n', ["unknown section [wrokers]", "did you mean [workers]"]),
    ('[server]\nhttp_port = "8000"\n', ["server.http_port", '"8000"', "expected an integer, got a string"]),
    ("[workers]\ncount = 2.5\n", ["workers.count", "2.5", "expected an integer"]),
    ("[workers]\ncount = true\n", ["workers.count", "expected an integer, got a boolean"]),
    ("[workers]\ncount = 0\n", ["workers.count = 0", "from 1 to 1024"]),
    ('[run]\nduration = "0s"\n', ["run.duration", '"0s"', "greater than zero"]),
    ('[run]\nduration = "-5m"\n', ["run.duration", '"-5m"', "greater than zero"]),
    ('[run]\nduration = "forever"\n', ["run.duration", '"forever"', "cannot read", "6d12h"]),
    ("[server]\nhttp_port = 70000\n", ["server.http_port = 70000", "from 0 to 65535"]),
    ("[server]\ngrpc_port = -1\n", ["server.grpc_port = -1", "from 0 to 65535"]),
    ("[server]\nhttp_port = 9000\ngrpc_port = 9000\n", ["must differ"]),
    ('[server]\nurl = "h:8000"\nbinary = "/bin/sh"\n', ["server.url", "not both"]),
    ('[server]\nurl = "h:8000"\nhttp_port = 9000\n', ["server.url", "grpc_url"]),
    ('[server]\nbinary = "/nonexistent/tritonserver"\n', ["server.binary", "no such file"]),
    ('[models]\nmodels = ["identity_fp32", "sequnce_int32"]\n',
     ["models.models[1]", '"sequnce_int32"', "must be one of", "did you mean 'sequence_int32'"]),
    ('[models]\nsequence_strategy = "newest"\n', ["models.sequence_strategy", "direct, oldest"]),
    ('[models.faults]\nleak_bytes = 5\n', ["unknown key [models.faults] leak_bytes", "leak_bytes_per_request"]),
    ('[workers]\nprotocol = "grcp"\n', ["workers.protocol", "grpc, grpc_stream, http", "did you mean 'grpc'"]),
    ("[scenarios.weights]\nsequence_vaild = 3\n", ["unknown key [scenarios.weights] sequence_vaild",
                                                   "did you mean 'sequence_valid'"]),
    ("[scenarios.weights]\nidentity = -1\n", ["scenarios.weights.identity = -1", "0 or more"]),
    ("[scenarios.weights]\n" + "".join(f"{k} = 0\n" for k in DEFAULT_WEIGHTS), ["at least one weight"]),
    ('[scenarios]\nsteady_load_queue_low = "200ms"\n', ["steady_load_queue_low", "below steady_load_queue_high"]),
    ('[report.email]\npassword = "hunter2"\n', ["never put a password in a config", "password_env"]),
    ('[report.email]\nsmtp_host = "mail"\n', ["report.email.smtp_host", "sender and recipients"]),
    ('[detectors]\nfatal = ["leaks"]\n', ["detectors.fatal[0]", "did you mean 'leak'"]),
    ('workers = 3\n', ["[workers] must be a table"]),
    ('[perf]\nconcurrency = [1, 0]\n', ["perf.concurrency[1] = 0", "1 or more"]),
])
def test_bad_input_says_file_key_value_and_what_is_allowed(tmp_path: Path, text: str, expected: list[str]) -> None:
    message = _error(tmp_path, text)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_cuda_shm_needs_a_gpu_and_auto_falls_back(tmp_path: Path) -> None:
    message = _error(tmp_path, '[workers]\nshm = "cuda"\n', gpu_count=lambda: 0)
    assert "workers.shm" in message and "no usable GPU" in message and '"auto"' in message
    assert _load(tmp_path, '[workers]\nshm = "auto"\n', gpu_count=lambda: 0).workers.shm == "auto"
    assert _load(tmp_path, '[workers]\nshm = "cuda"\n', gpu_count=lambda: 1).workers.shm == "cuda"


def test_malformed_toml_names_the_line(tmp_path: Path) -> None:
    message = _error(tmp_path, '[run]\nseed = 1\nduration = "7h\n')
    assert "not valid TOML" in message and "line 3" in message


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file, and not a shipped config.*long"):
        resolve_config_path(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not a shipped config"):
        resolve_config_path("nope")
    locked = tmp_path / "locked.toml"
    locked.write_text("")
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads anything: a directory stands in for an unreadable file
        with pytest.raises(ConfigError, match="cannot read"):
            load_config(tmp_path)
    else:
        with pytest.raises(ConfigError, match="cannot read"):
            load_config(locked)


def test_resolve_prefers_a_file_in_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "long.toml").write_text('[run]\nduration = "1m"\n')
    monkeypatch.chdir(tmp_path)
    assert load_config(resolve_config_path("long.toml"), environ={}).run.duration == 60
    assert resolve_config_path("long").parent.name == "configs"  # the bare name is the shipped one


def test_resolved_config_is_json_ready(tmp_path: Path) -> None:
    import orjson

    plain = config_to_dict(_load(tmp_path, '[run]\nduration = "2m"\nseed = 9\n'))
    again = orjson.loads(orjson.dumps(plain))
    assert again["run"] == {"duration": 120.0, "seed": 9, "results_dir": "results", "memory_budget": 0.8,
                            "memory_budget_bytes": 0}
    assert again["models"]["faults"]["leak_bytes_per_request"] == 65536
