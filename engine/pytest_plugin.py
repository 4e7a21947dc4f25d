"""pytest fixtures that stress a Triton server and assert the verdict (entry point `pytest11`).

    def test_my_models_hold_up(stress):
        assert stress().passed

Fixtures; override any of them in a conftest.py or a test module:

- `triton_config` (session): the config `stress()` runs by default; its `[models]` are what the
  launched server's generated repository holds. Default: the ini option `triton_config` (a TOML
  file relative to the rootdir, or a shipped config's name), else "smoke".
- `triton_repository` (session): the model repository a launched server serves. Default: the ini
  option `triton_repository`, else `triton_config`'s `[models]` generated into a temporary directory.
- `triton_server` (session): the bundled tritonserver on `triton_repository`, stopped at the end of
  the session; with `--triton-url HOST:PORT` (and `--triton-grpc-url`, `--triton-metrics-url` where
  they are not on the HTTP port + 1 and + 2), the running server at that address (nothing launched).
- `stress` (function): `stress(config=None, **sections) -> RunResult` runs a config (default
  `triton_config`; sections merged as `engine.make_config` does) against `triton_server`, with its
  run directory under the test's `tmp_path`.

A test that fails after a run that did not pass gets that run's `RunResult.explain()` (verdicts,
first error texts, incidents) as a section of its failure report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # the engine loads with the first fixture that needs it, not with every pytest session
    from engine.library import ConfigLike, Progress, RunResult
    from engine.server import AttachedServer, LaunchedServer, ServerEndpoints

    TritonServer = LaunchedServer | AttachedServer

DEFAULT_CONFIG = "smoke"
_RESULTS = pytest.StashKey[list["RunResult"]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("triton-endurance", "stress runs against Triton Inference Server")
    group.addoption("--triton-url", metavar="HOST:PORT", default=None,
                    help="the triton_server fixture attaches to the running server at this HTTP address "
                         "instead of launching the bundled one")
    group.addoption("--triton-grpc-url", metavar="HOST:PORT", default="",
                    help="with --triton-url: the server's gRPC address (default: the HTTP port + 1)")
    group.addoption("--triton-metrics-url", metavar="URL", default="",
                    help="with --triton-url: the server's metrics URL (default: the HTTP port + 2, /metrics)")
    parser.addini("triton_config", default=DEFAULT_CONFIG,
                  help="config of the stress fixture and of the generated repository: a TOML file "
                       "(relative to the rootdir) or a shipped config's name")
    parser.addini("triton_repository", default="",
                  help="model repository the triton_server fixture serves (relative to the rootdir); "
                       "empty: triton_config's [models], generated")


def _rooted(config: pytest.Config, value: str) -> Path | None:
    path = Path(value)
    path = path if path.is_absolute() else config.rootpath / path
    return path if path.exists() else None


@pytest.fixture(scope="session")
def triton_config(pytestconfig: pytest.Config) -> ConfigLike:
    """The config stress() runs by default (ini triton_config, else "smoke"); override to return a
    Config, a path or a dict."""
    value = str(pytestconfig.getini("triton_config") or DEFAULT_CONFIG)
    return _rooted(pytestconfig, value) or value


@pytest.fixture(scope="session")
def triton_repository(pytestconfig: pytest.Config, triton_config: ConfigLike,
                      tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository a launched server serves: ini triton_repository, else triton_config's
    [models], generated."""
    value = str(pytestconfig.getini("triton_repository") or "")
    if value:
        found = _rooted(pytestconfig, value)
        if found is None or not found.is_dir():
            raise pytest.UsageError(f"ini option triton_repository = {value!r}: no such directory")
        return found
    from engine.library import as_config
    from model_repo_gen import generate_repository

    out = tmp_path_factory.mktemp("triton_repository")
    generate_repository(out, as_config(triton_config).models)
    return out


@pytest.fixture(scope="session")
def triton_server(request: pytest.FixtureRequest, triton_config: ConfigLike,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """The bundled tritonserver on triton_repository for the session, or the server at --triton-url."""
    from engine.library import as_config
    from engine.server import LaunchedServer, LaunchOptions, attach_server, endpoints_from_urls

    settings = as_config(triton_config).server
    url = request.config.getoption("triton_url")
    if url:
        endpoints = endpoints_from_urls(url, request.config.getoption("triton_grpc_url"),
                                        request.config.getoption("triton_metrics_url"))
        with attach_server(endpoints, (), timeout=settings.startup_timeout) as attached:
            yield attached
        return
    repository = request.getfixturevalue("triton_repository")  # only a launched server needs one
    extra = (Path(settings.model_repository).resolve(),) if settings.model_repository else ()
    server = LaunchedServer(LaunchOptions(
        repository=Path(repository), work_dir=tmp_path_factory.mktemp("triton_server"),
        binary=Path(settings.binary) if settings.binary else None, startup_timeout=settings.startup_timeout,
        stop_timeout=settings.stop_timeout, extra_args=tuple(settings.extra_args), extra_repositories=extra))
    try:
        server.start()
        yield server
    finally:
        server.stop()


class Stress:
    """The `stress` fixture's value: each call is one run against the session's server."""

    def __init__(self, endpoints: ServerEndpoints, default: ConfigLike, results_dir: Path,
                 results: list[RunResult]) -> None:
        self.endpoints = endpoints
        self.default = default
        self.results_dir = results_dir
        self.results = results  # every run of the test, for its failure report

    def __call__(self, config: ConfigLike | None = None, /, *, progress: Progress | None = None,
                 **sections: Mapping[str, Any]) -> RunResult:
        """Run `config` (default: `triton_config`) with `sections` merged in, attached to the
        session's server, and return its result (whatever the verdict: assert on it)."""
        from engine.library import make_config, run

        base = make_config(self.default if config is None else config, **sections)
        attached = make_config(base, server={
            "url": self.endpoints.http, "grpc_url": self.endpoints.grpc, "metrics_url": self.endpoints.metrics,
            "binary": "", "http_port": 0, "grpc_port": 0, "metrics_port": 0, "model_repository": ""},
            run={"results_dir": str(self.results_dir)})
        result = run(attached, progress=progress)
        self.results.append(result)
        return result


@pytest.fixture
def stress(request: pytest.FixtureRequest, triton_server: TritonServer, triton_config: ConfigLike,
           tmp_path: Path) -> Stress:
    """stress(config=None, **sections) -> RunResult: a run attached to triton_server."""
    results: list[RunResult] = []
    request.node.stash[_RESULTS] = results
    return Stress(triton_server.endpoints, triton_config, tmp_path, results)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # A failure's representation (an exception's) takes extra titled sections; a skip's does not.
    add_section = getattr(report.longrepr, "addsection", None)
    if report.when == "call" and report.failed and add_section is not None:
        for result in item.stash.get(_RESULTS, []):
            if not result.passed:
                add_section(f"stress run {result.run_id}: {result.verdict}", result.explain())
    return report
