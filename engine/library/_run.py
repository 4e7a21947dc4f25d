"""`run(config)`: one whole run from Python, as `python -m engine run` does it, with its printed
lines going to a callback or a logger instead of stdout, and a typed result at the end.

Each call is a run of its own (its own run directory, processes, sockets and store): nothing is
kept between calls, so runs follow one another in one process."""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from engine.config import Config

from ._config import ConfigLike, as_config
from ._main_module import main_module_hidden
from ._result import STORE_NAME, Incident, RunResult, result_from_report

if TYPE_CHECKING:
    from engine.report import RunReport

LOGGER_NAME = "engine.run"
LIVE_MODES = ("plain", "off")
OUTPUT_KEPT = 10_000  # lines of the run's output a result keeps (a multi-day run says a line every 10 s)

# Where a run's lines go: a callable that takes each line, or a logger (each line at INFO).
Progress = Callable[[str], None] | logging.Logger


def run(config: ConfigLike, *, progress: Progress | None = None, live: str | None = None,
        stop: threading.Event | None = None) -> RunResult:
    """Run `config` (a Config, a TOML path or shipped name, or a dict shaped like the TOML) to its
    end and return what it found. Blocks for the run's duration; SIGINT stops it gracefully as on
    the command line (a second one raises KeyboardInterrupt).

    progress: where the run's lines go (start-up, live progress, verdicts as they are raised,
        incidents, the final summary): a callable, or a logger; default the logger "engine.run"
        at INFO. Nothing is printed unless asked (`progress=print`).
    live: "plain" (a progress line every 10 s) or "off"; default: the config's [report] live,
        where "auto" and "line" (a terminal's line rewritten in place) mean "plain".
    stop: set it (from another thread) to stop the load gracefully, as a first SIGINT does; the
        only way to stop a run started outside the main thread, where Python takes no signals.

    Raises ConfigError (bad config; BudgetError when it cannot fit this host's memory),
    ServerSetupError (the server could not be launched or reached), LoadError (a [[load]] entry
    the server cannot serve), PlanError (a weighted scenario without the models it needs): the
    set-ups that `python -m engine` answers with exit status 2."""
    resolved = as_config(config)  # a bad config is said before the whole engine loads
    mode = _live_mode(live, resolved)
    sink = _sink(progress)
    lines: collections.deque[str] = collections.deque(maxlen=OUTPUT_KEPT)
    from engine.coordinator import run_config

    def say(text: str) -> None:
        for line in text.split("\n"):  # a block (the final summary) is said as its lines
            lines.append(line)
            sink(line)

    with main_module_hidden():  # a script without a main guard is not run again in each child
        outcome = run_config(resolved, say=say, live=mode, stop=stop)
    root = outcome.paths.root
    report = _report_of(root)
    incidents = tuple(Incident(i.at_s, i.what) for i in outcome.incidents)
    return result_from_report(report, root, exit_code=outcome.exit_code, incidents=incidents, output=tuple(lines),
                              run_id=outcome.paths.run_id)


def _live_mode(live: str | None, config: Config) -> str:
    if live is None:
        return "off" if config.report.live == "off" else "plain"
    if live not in LIVE_MODES:
        raise ValueError(f"live={live!r}: choose one of {', '.join(LIVE_MODES)} (a callback gets whole lines)")
    return live


def _sink(progress: Progress | None) -> Callable[[str], None]:
    if progress is None:
        progress = logging.getLogger(LOGGER_NAME)
    if isinstance(progress, logging.Logger):
        logger = progress
        return lambda line: logger.info("%s", line)
    if not callable(progress):
        raise TypeError(f"progress: expected a callable or a logging.Logger, got {type(progress).__name__}")
    return progress


def _report_of(root: Path) -> RunReport | None:
    """The run's report from its store, or None when it recorded nothing."""
    from engine.report import load_report

    if not (root / STORE_NAME).is_file():
        return None
    try:
        return load_report(root)
    except (sqlite3.DatabaseError, ValueError):
        return None
