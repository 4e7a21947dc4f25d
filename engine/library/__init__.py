"""Library use of the engine: run a config and read its result, from Python or from pytest.

    import engine

    result = engine.run(engine.make_config("smoke", run={"duration": "30s"}))
    print(result.verdict, [v.text for v in result.verdicts])

docs/library.md describes every name, with examples the test suite runs."""

from ._config import ConfigLike, as_config, make_config
from ._result import Incident, RunFiles, RunResult, StressFailed, open_run
from ._run import LOGGER_NAME, Progress, run

__all__ = [
    "LOGGER_NAME",
    "ConfigLike",
    "Incident",
    "Progress",
    "RunFiles",
    "RunResult",
    "StressFailed",
    "as_config",
    "make_config",
    "open_run",
    "run",
]
