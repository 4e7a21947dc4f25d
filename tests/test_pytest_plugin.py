"""The pytest plugin, from a user's project (pytester, each session its own process): the test file
of docs/library.md passes on healthy models and fails on a faulty one, naming the verdict and the
first wrong answer; --triton-url attaches instead of launching; the options and fixtures are listed."""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
from pathlib import Path

import pytest

from tests.docs_examples import pytest_file_example
from tests.server_helpers import serve_repository

pytest_plugins = ["pytester"]

SESSION_TIMEOUT_S = 240  # one inner session: a server start, a 20 s run, the server's stop


def _plugin_args() -> tuple[str, ...]:
    """`-p engine.pytest_plugin` where pytest would not load the plugin by itself (the package's
    entry point is not installed, or plugin autoload is off)."""
    # Every distribution's entry points, as pytest reads them (a stale egg-info in the working directory
    # would hide the installed one from entry_points()).
    installed = any(ep.group == "pytest11" and ep.value == "engine.pytest_plugin"
                    for dist in importlib.metadata.distributions() for ep in dist.entry_points)
    return () if installed and not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD") else ("-p", "engine.pytest_plugin")


def _run(pytester: pytest.Pytester, *args: str, timeout: float = SESSION_TIMEOUT_S) -> pytest.RunResult:
    # A short base directory: a run's telemetry socket lives in its run directory, and a unix socket's
    # path must stay under 108 bytes (pytester's own base directory is named after the outer test).
    with tempfile.TemporaryDirectory(prefix="pt-") as base:
        return pytester.runpytest_subprocess(*_plugin_args(), "-p", "no:cacheprovider", f"--basetemp={base}/t",
                                             *args, timeout=timeout)


def test_the_options_and_fixtures_are_listed(pytester: pytest.Pytester) -> None:
    helped = _run(pytester, "--help", timeout=60)
    helped.stdout.fnmatch_lines(["*--triton-url=HOST:PORT*", "*--triton-grpc-url=HOST:PORT*",
                                 "*--triton-metrics-url=URL*", "*triton_config (string)*",
                                 "*triton_repository (string)*"])
    listed = _run(pytester, "--fixtures", timeout=60)
    listed.stdout.fnmatch_lines(["*fixtures defined from engine.pytest_plugin*", "stress -- *", "*RunResult*",
                                 "triton_config [[]session scope[]]*", "triton_repository [[]session scope[]]*",
                                 "triton_server [[]session scope[]]*"])


def test_a_missing_repository_directory_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntriton_repository = no/such/repo\n")
    pytester.makepyfile(test_repo="def test_repo(triton_repository):\n    pass\n")
    result = _run(pytester, timeout=60)
    result.stdout.fnmatch_lines(["*triton_repository = 'no/such/repo': no such directory*"])
    assert result.ret != 0


@pytest.mark.timeout(SESSION_TIMEOUT_S + 30)
def test_the_documented_test_file_passes_on_healthy_models(pytester: pytest.Pytester) -> None:
    example = pytest_file_example()
    pytester.makepyfile(**{example.pytest_file[:-3]: example.code})
    result = _run(pytester, "-ra")
    result.assert_outcomes(passed=1)


@pytest.mark.timeout(SESSION_TIMEOUT_S + 30)
def test_a_faulty_model_fails_the_test_naming_the_verdict(pytester: pytest.Pytester) -> None:
    example = pytest_file_example()
    healthy = '"decoupled_int32"]'
    assert healthy in example.code
    faulty = example.code.replace(healthy, '"decoupled_int32", "wrong_fp32"]')  # answers every 50th request wrongly
    pytester.makepyfile(**{example.pytest_file[:-3]: faulty})
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*assert False*",
        "*where False = RunResult(FAIL: WRONG wrong_fp32*",  # the one-line repr, verdict first
        "*stress run * FAIL*",  # the section the plugin adds to the failure
        "*verdict [[]open[]] wrong_answers: WRONG wrong_fp32*",
        "*first scenario_failed in *: wrong_fp32 step *: OUTPUT0 * != expected *",
    ])


@pytest.mark.timeout(SESSION_TIMEOUT_S)
def test_triton_url_attaches_to_a_running_server(pytester: pytest.Pytester, tmp_path: Path) -> None:
    from model_repo_gen import RepoOptions, generate_repository

    generate_repository(tmp_path / "repo", RepoOptions(models=("identity_fp32",), instance_count=1))
    with serve_repository(tmp_path / "repo", tmp_path / "work") as running:
        pytester.makepyfile(test_attach=f"""
            from engine import AttachedServer

            def test_attached(triton_server):
                assert isinstance(triton_server, AttachedServer)
                assert triton_server.endpoints.http == {running.http_url!r}
                assert triton_server.endpoints.grpc == {running.grpc_url!r}
        """)
        result = _run(pytester, f"--triton-url={running.http_url}", f"--triton-grpc-url={running.grpc_url}",
                      timeout=120)
    result.assert_outcomes(passed=1)
