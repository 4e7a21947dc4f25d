"""What a run leaves a caller: `RunResult`, built from the run's store (the same report the
command line prints), so a finished run, a run just ended and the store of a killed run read alike."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # the report's machinery loads with the first result, not with `import engine`
    import numpy as np

    from engine.report import RunReport
    from engine.report.build import LatencyRow, ScenarioRow, VerdictEntry
    from engine.store import RunStore
    from engine.window_stats import WindowStats

T = TypeVar("T")

STORE_NAME = "run.sqlite"
EXPLAIN_SAMPLES = 3  # first error texts shown per failing verdict
EXPLAIN_LINES = 12  # lines of the run's own output shown when nothing was recorded


class StressFailed(AssertionError):
    """`RunResult.check()` on a run that did not pass; the message is `RunResult.explain()`."""


@dataclass(frozen=True)
class Incident:
    """Something that happened to the run itself (a process replaced, a server restarted)."""

    at_s: float  # seconds since the load started
    what: str


@dataclass(frozen=True)
class RunFiles:
    """Where a run's files are; a report file is None when the run did not write it."""

    run_dir: Path
    store: Path  # run.sqlite: everything the run recorded, committed every second
    config: Path  # config.json: the resolved config, with the seed that replays it
    report_json: Path | None
    report_html: Path | None
    report_text: Path | None  # stress_report.txt, the reference suite's table
    server_log: Path | None  # the log of a server the run launched

    @classmethod
    def of(cls, run_dir: Path) -> RunFiles:
        root = Path(run_dir)

        def found(path: Path) -> Path | None:
            return path if path.is_file() else None

        return cls(run_dir=root, store=root / STORE_NAME, config=root / "config.json",
                   report_json=found(root / "report.json"), report_html=found(root / "report.html"),
                   report_text=found(root / "stress_report.txt"),
                   server_log=found(root / "server" / "tritonserver.log"))


@dataclass(frozen=True, repr=False)
class RunResult:
    """The outcome of one run: its verdict and exit code, the per-scenario totals, every detector
    verdict with its evidence, the incidents, per-model latency and where the files are.

    `assert result.passed` fails with the verdicts named (see `__repr__`, and the pytest plugin
    adds `explain()` to the failure); `check()` raises StressFailed with `explain()` as its message."""

    run_id: str
    verdict: str  # "PASS" or "FAIL"
    exit_code: int  # 0 pass, 1 fail: what `python -m engine` exits with
    ended_normally: bool  # False: a killed run's store (or a run that recorded nothing)
    duration_s: float  # of the load, as recorded
    scenarios: tuple[ScenarioRow, ...]  # the reference suite's table: plans, failed, requests
    verdicts: tuple[VerdictEntry, ...]  # every verdict, failing or not (see `failing`)
    incidents: tuple[Incident, ...]
    latency: tuple[LatencyRow, ...]  # per (model, scenario, protocol) over the whole run
    first_texts: Mapping[str, str]  # "<event> in <scenario>" -> its first text (errors, mismatches)
    files: RunFiles
    report: RunReport | None = None  # the full report (report.json's tree); None: nothing was recorded
    output: tuple[str, ...] = field(default=(), compare=False)  # the lines the run said, in order

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    @property
    def run_dir(self) -> Path:
        return self.files.run_dir

    @property
    def failing(self) -> tuple[VerdictEntry, ...]:
        """The verdicts that fail the run (open or cleared); the others are notes."""
        return tuple(v for v in self.verdicts if v.failing)

    @property
    def failed_scenarios(self) -> tuple[ScenarioRow, ...]:
        return tuple(s for s in self.scenarios if s.failed)

    def errors(self) -> dict[str, str]:
        """The first text of each kind of failure, by "<event> in <scenario>" (scenario failures,
        request errors and wrong answers as the workers saw them)."""
        return {k: v for k, v in self.first_texts.items() if k.startswith("scenario_failed")}

    def explain(self) -> str:
        """Why the run passed or failed, in a few lines: verdict, failing verdicts with their first
        error texts, failed scenarios, incidents, and where the files are."""
        lines = [f"run {self.run_id}: {self.verdict} (exit {self.exit_code}); results in {self.run_dir}"]
        if not self.ended_normally:
            lines.append("the run did not end normally" + ("" if self.report else " and recorded nothing"))
        for v in self.failing:
            lines.append(f"verdict [{v.state}] {v.detector}: {v.text}")
            lines.extend(f"    {sample[:300]}" for sample in v.samples[1:EXPLAIN_SAMPLES])
        for s in self.failed_scenarios:
            lines.append(f"scenario {s.scenario}: {s.failed} of {s.plans} plans failed")
        for key, text in sorted(self.errors().items()):
            lines.append(f"first {key}: {text[:300]}")
        lines.extend(f"incident at {i.at_s:.0f} s: {i.what}" for i in self.incidents)
        if self.report is None and self.output:
            lines.append("the run said, last:")
            lines.extend(f"    {line}" for line in self.output[-EXPLAIN_LINES:])
        return "\n".join(lines)

    def check(self) -> None:
        """Raise StressFailed (an AssertionError) with `explain()` unless the run passed."""
        if not self.passed:
            raise StressFailed(self.explain())

    def __repr__(self) -> str:
        # One line, the verdicts first: pytest shows it in `where False = <repr>.passed` and cuts
        # long ones in the middle.
        parts = [f"{v.kind} {v.subject}" for v in self.failing]
        parts += [f"{s.scenario}: {s.failed}/{s.plans} plans failed" for s in self.failed_scenarios]
        if not self.ended_normally:
            parts.append("did not end normally")
        return f"RunResult({self.verdict}: {'; '.join(parts) or 'no failing verdict'}; run_dir={str(self.run_dir)!r})"

    # -- the store, read on demand --------------------------------------------------------------
    def series_names(self) -> list[str]:
        """Names of the resource series the monitor sampled ("proc/server/rss_anon", ...)."""
        return self._read(lambda store: store.series_names())

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """One resource series as (seconds since the load started, values)."""
        return self._read(lambda store: store.series(name))

    def windows(self, model: str | None = None, scenario: str | None = None,
                protocol: str | None = None) -> list[WindowStats]:
        """The closed windows (counts, throughput, latency percentiles), in time order."""
        return self._read(lambda store: store.windows(model, scenario, protocol))

    def _read(self, what: Callable[[RunStore], T]) -> T:
        from engine.store import RunStore

        store = RunStore.open(self.files.store)
        try:
            return what(store)
        finally:
            store.close()


def result_from_report(report: RunReport | None, run_dir: Path, *, exit_code: int | None = None,
                       incidents: tuple[Incident, ...] = (), output: tuple[str, ...] = (),
                       run_id: str = "") -> RunResult:
    """A RunResult from the run's report (None: the run recorded nothing). `exit_code`, when given,
    is the run's own and wins over the report's (they agree whenever both exist)."""
    files = RunFiles.of(run_dir)
    if report is None:
        code = 1 if exit_code is None else exit_code
        return RunResult(run_id=run_id or files.run_dir.name, verdict="PASS" if code == 0 else "FAIL",
                         exit_code=code, ended_normally=False, duration_s=0.0, scenarios=(), verdicts=(),
                         incidents=incidents, latency=(), first_texts=MappingProxyType({}), files=files,
                         report=None, output=output)
    code = report.exit_code if exit_code is None else exit_code
    return RunResult(
        run_id=report.run_id, verdict="PASS" if code == 0 else "FAIL", exit_code=code,
        ended_normally=report.ended_normally, duration_s=report.duration_s, scenarios=tuple(report.scenarios),
        verdicts=tuple(report.verdicts), incidents=tuple(Incident(at, what) for at, what in report.incidents),
        latency=tuple(report.latency), first_texts=MappingProxyType(dict(report.first_texts)), files=files,
        report=report, output=output)


def open_run(run_dir: str | Path) -> RunResult:
    """The result of a finished run, or of what a killed run committed (then `ended_normally` is
    False and the verdict FAIL), from its directory's store alone; nothing is written.

    Raises FileNotFoundError when the directory has no store, ValueError for a store of another
    schema version."""
    from engine.report import load_report

    root = Path(run_dir)
    try:
        report = load_report(root)
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{root / STORE_NAME}: not a readable run store: {exc}") from None
    return result_from_report(report, root)
