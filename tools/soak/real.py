"""A real soak: the engine at full load for hours (`make soak`, 2 hours by default), with the
footprint of every engine process and of the run.

It runs the footprint benchmark's measurement (tools/bench/footprint.py: the real engine on the
embedded default, the bundled tritonserver on CPU, the generated healthy smoke models, closed loop,
`--workers` x `--concurrency` plans in flight; its processes found through /proc and sampled every
`--interval` seconds) for `--minutes`, and judges more of it than the benchmark does:

- per engine process (coordinator, aggregator, monitor, worker-N): VmRSS and RssAnon at the start
  and the end of the load, their Theil-Sen slope in MiB/h after the warm-up and over the second
  half alone (a process that settles slows down, a leak keeps its pace; the warm-up is a fifth of
  the load, at most 10 minutes); open fds and threads at the start, after the warm-up, at the end,
  their maximum, their slope per hour and the slope of their floor (a leaked fd stays open: the
  floor rises, where a busy moment lifts single samples);
- for the run: its files in /dev/shm (files and allocated bytes: start, end, maximum, the floor of
  the first and the last sixth of the load), its store (run.sqlite and its WAL: MiB per hour, at the
  end of the load and after the engine's exit), what was left behind once the engine exited;
- the engine's exit status, its verdict, every verdict it recorded, its incidents, requests/s.

Targets: RSS growth under 1 MiB/h per engine process; fds and threads flat (end - after warm-up
<= 2, and a floor that rises by no more than 2 over the load); /dev/shm back to its steady level
(the last sixth's floor no higher than the first sixth's, within 2 files and 1 MiB) and nothing of
the run left in it; no failing verdicts; exit status 0. A missed target is a finding written down:
the tool still exits 0, as `make bench` does.

It prints the section (Markdown) and writes it into BENCHMARKS.md between the lines
`<!-- soak:begin -->` and `<!-- soak:end -->` (appended at the end when absent; the rest of the file
is left as it is, and tools/bench/run_all.py keeps this section when `make bench` rewrites the
file), and writes the same figures as JSON to `soak.json` beside it (the repository root by
default). `--no-write` prints only. `--keep` keeps the engine's log, config, run directory and every
sample (samples.json) in a temporary directory, named in the notes.

    python tools/soak/real.py [--minutes 120] [--workers 2] [--concurrency 2] [--interval 10]
                              [--profile long] [--out BENCHMARKS.md] [--no-write] [--keep]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # the benchmarks' modules, as scripts see them
import footprint  # noqa: E402  (footprint imports common, which puts the repository root on sys.path)
from common import ROOT, BenchResult, Target  # noqa: E402
from footprint import GOAL_MIB_PER_H, MIB, WARMUP_SHARE, Series, Tracker  # noqa: E402
from run_all import SOAK_BEGIN, SOAK_END, _commit, _machine  # noqa: E402

COUNT_TOLERANCE = 2  # fds or threads: a connection or a helper thread that happens to be open at the end
SHM_FILES_TOLERANCE = 2
SHM_BYTES_TOLERANCE = 1 << 20  # one large request's region (the smoke mix's large tensors are 1 MiB)
WINDOW_SHARE = 1 / 6  # the first and the last sixth of the load after warm-up: the floors compared
# Longer than the benchmark's: over hours, what is made once on first use (a worker's region for
# its first large request, its fds), the server's own start-up growth and the store's WAL reaching
# its size must settle before the slopes and the "after warm-up" figures are taken.
WARMUP_MAX_S = 600.0
MIN_AFTER_FILL_S = 900.0  # load after the retention has filled before a slope is fitted over it


# -- figures ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Count:
    """A countable resource of one process (fds, threads) over the load."""

    start: int
    settled: int  # the first sample after the warm-up: what `rise` is measured from
    end: int
    max: int
    slope_per_h: float | None
    floor_slope_per_h: float | None
    rise: int  # end - settled
    floor_rise: float | None  # the floor's slope times the hours it was fitted over


@dataclass(frozen=True)
class ProcessFigures:
    label: str
    engine: bool  # judged; the server's processes and Python's resource tracker are context
    pids: list[int]
    samples: int
    lived_through: bool  # sampled over at least half of the load after warm-up
    rss_start_mib: float
    rss_end_mib: float
    anon_start_mib: float
    anon_end_mib: float
    rss_slope: float | None  # MiB/h after warm-up
    rss_interval: tuple[float, float] | None  # its 95 % interval
    rss_half_slope: float | None  # MiB/h over the second half
    rss_filled_slope: float | None  # MiB/h after the aggregator's retention has filled (None: too little load after)
    rss_floor_slope: float | None
    anon_slope: float | None
    anon_half_slope: float | None
    fds: Count | None  # None: not read (the process was gone at every read)
    threads: Count | None


@dataclass(frozen=True)
class Level:
    """One of the run's figures (/dev/shm files, /dev/shm MiB, store MiB) over the load."""

    start: float
    settled: float
    end: float
    max: float
    slope_per_h: float | None
    floor_first: float | None  # the minimum over the first sixth after warm-up: the steady level
    floor_last: float | None  # the minimum over the last sixth
    after_exit: float | None


def warmup_s(duration: float) -> float:
    return min(WARMUP_SHARE * duration, WARMUP_MAX_S)


def _slope(fit: tuple[float, float, float, int] | None) -> float | None:
    return fit[0] if fit else None


def _count(times: list[float], values: list[int], warmup: float, interval: float) -> Count | None:
    read = [(t, v) for t, v in zip(times, values) if v >= 0]
    if not read:
        return None
    t, v = [p[0] for p in read], [p[1] for p in read]
    settled = next((value for at, value in read if at >= warmup), v[-1])
    floor = footprint.floor_slope(t, v, warmup, interval, unit=1.0)
    span_h = max(t[-1] - max(warmup, t[0]), 0.0) / 3600.0
    return Count(v[0], settled, v[-1], max(v), _slope(footprint.theil_sen(t, v, warmup, unit=1.0)), floor,
                 v[-1] - settled, floor * span_h if floor is not None else None)


def retention_filled_s(profile: str) -> float:
    """The run second by which the aggregator holds all its bounded history will ever hold (the
    drift attribution's first and latest stage samples, engine/aggregator/stages.py): its memory
    grows by design until then, so its growth is also measured after it."""
    from engine.aggregator.stages import StageWatch
    from engine.config import DetectorsSection
    from engine.detectors.settings import resolve_settings

    return StageWatch.for_settings(resolve_settings(DetectorsSection(profile=profile))).filled_s


def process_figures(series: Series, duration: float, interval: float, filled: float = math.inf) -> ProcessFigures:
    warmup = warmup_s(duration)
    half = (max(warmup, series.times[0]) + series.times[-1]) / 2
    fit = footprint.theil_sen(series.times, series.rss, warmup)
    span = series.times[-1] - max(warmup, series.times[0])
    after_fill = series.times[-1] - filled >= MIN_AFTER_FILL_S
    return ProcessFigures(
        series.label, series.engine, series.pids, len(series.rss), fit is not None and span >= (duration - warmup) / 2,
        series.rss[0] / MIB, series.rss[-1] / MIB, series.anon[0] / MIB, series.anon[-1] / MIB,
        _slope(fit), (fit[1], fit[2]) if fit else None, _slope(footprint.theil_sen(series.times, series.rss, half)),
        _slope(footprint.theil_sen(series.times, series.rss, filled)) if after_fill else None,
        footprint.floor_slope(series.times, series.rss, warmup, interval),
        _slope(footprint.theil_sen(series.times, series.anon, warmup)),
        _slope(footprint.theil_sen(series.times, series.anon, half)),
        _count(series.times, series.fds, warmup, interval), _count(series.times, series.threads, warmup, interval))


def _floors(times: list[float], values: list[float], warmup: float) -> tuple[float | None, float | None]:
    """Minima of the first and the last sixth of the samples after warm-up (at least 3 each)."""
    settled = [v for t, v in zip(times, values) if t >= warmup]
    n = max(3, round(len(settled) * WINDOW_SHARE))
    if len(settled) < n:
        return None, None
    return min(settled[:n]), min(settled[-n:])


def level(times: list[float], values: list[float], warmup: float, after_exit: float | None) -> Level | None:
    if not values:
        return None
    settled = next((v for t, v in zip(times, values) if t >= warmup), values[-1])
    fit = footprint.theil_sen(times, values, warmup, unit=1.0)
    first, last = _floors(times, values, warmup)
    return Level(values[0], settled, values[-1], max(values), _slope(fit), first, last, after_exit)


def run_figures(tracker: Tracker, duration: float, outcome: dict[str, Any]) -> dict[str, Level | None]:
    run, warmup = tracker.run, warmup_s(duration)
    return {
        "/dev/shm files": level(run.times, [float(v) for v in run.shm_files], warmup,
                                float(outcome.get("left_shm_files", 0))),
        "/dev/shm MiB": level(run.times, [v / MIB for v in run.shm_bytes], warmup,
                              0.0 if outcome.get("left_shm_files", 0) == 0 else None),
        "store MiB": level(run.times, [v / MIB for v in run.store_bytes], warmup,
                           outcome["store_bytes_after"] / MIB if "store_bytes_after" in outcome else None),
    }


# -- targets ----------------------------------------------------------------------------------------
def _count_target(name: str, label: str, count: Count | None) -> Target:
    goal = f"flat: end - after warm-up <= {COUNT_TOLERANCE}, floor rise <= {COUNT_TOLERANCE}"
    if count is None:
        return Target(f"{name} flat, {label}", goal, "not read", False)
    floor = f"{count.floor_rise:+.1f}" if count.floor_rise is not None else "unknown (too few samples)"
    measured = (f"{count.start} at the start, {count.settled} after warm-up, {count.end} at the end (max {count.max}); "
                f"rise {count.rise:+d}, floor rise {floor}")
    met = count.rise <= COUNT_TOLERANCE and count.floor_rise is not None and count.floor_rise <= COUNT_TOLERANCE
    return Target(f"{name} flat, {label}", goal, measured, met)


def process_targets(figures: ProcessFigures, filled: float = math.inf) -> list[Target]:
    """RSS, fds and threads of one engine process. The aggregator's RSS is judged once its bounded
    history has filled (`filled`, minute 74 of the long profile), where the soak ran 15 minutes
    past it: until then it grows by design, by what a run of days pays once. Every slope is shown."""
    name, goal = f"RSS growth, {figures.label}", f"< {GOAL_MIB_PER_H:g} MiB/h"
    after_fill = figures.label == "aggregator" and figures.rss_filled_slope is not None
    if after_fill:
        goal += f" once its bounded history has filled (from minute {filled / 60:.0f} of the load)"
    if not figures.lived_through or figures.rss_slope is None:
        rss = Target(name, goal, "not judged: the process did not live through the load", False)
    else:
        low, high = figures.rss_interval or (float("nan"), float("nan"))
        judged = figures.rss_filled_slope if after_fill else figures.rss_slope
        measured = (f"{judged:+.2f} MiB/h (after warm-up {figures.rss_slope:+.2f}, 95 % interval {low:+.2f} to "
                    f"{high:+.2f}; RSS {figures.rss_start_mib:.1f} -> {figures.rss_end_mib:.1f} MiB; second half "
                    f"{_signed(figures.rss_half_slope)} MiB/h; after the fill {_signed(figures.rss_filled_slope)} "
                    f"MiB/h; RssAnon {_signed(figures.anon_slope)} MiB/h)")
        rss = Target(name, goal, measured, judged < GOAL_MIB_PER_H)
    return [rss, _count_target("fds", figures.label, figures.fds),
            _count_target("threads", figures.label, figures.threads)]


def run_targets(levels: dict[str, Level | None], outcome: dict[str, Any]) -> list[Target]:
    files, size = levels["/dev/shm files"], levels["/dev/shm MiB"]
    goal = (f"the last sixth's floor <= the first sixth's + {SHM_FILES_TOLERANCE} files, "
            f"+ {SHM_BYTES_TOLERANCE / MIB:g} MiB; nothing left after the exit")
    left = int(outcome.get("left_shm_files", 0))
    if files is None or size is None or None in (files.floor_first, files.floor_last,
                                                   size.floor_first, size.floor_last):
        shm = Target("/dev/shm back to its steady level", goal, f"too few samples; {left} files left", False)
    else:
        shm = Target("/dev/shm back to its steady level", goal,
                     f"floor {files.floor_first:.0f} -> {files.floor_last:.0f} files, {size.floor_first:.1f} -> "
                     f"{size.floor_last:.1f} MiB (max {files.max:.0f} files, {size.max:.1f} MiB); {left} files left",
                     files.floor_last - files.floor_first <= SHM_FILES_TOLERANCE
                     and size.floor_last - size.floor_first <= SHM_BYTES_TOLERANCE / MIB and left == 0)
    report = outcome.get("report") or {}
    failing = [v for v in report.get("verdicts") or [] if v.get("failing")]
    return [shm,
            Target("no verdicts", "none failing (open or cleared)",
                   f"{len(failing)} failing of {len(report.get('verdicts') or [])}" if report else "no report.json",
                   bool(report) and not failing),
            Target("engine exit status", "0", f"{outcome.get('exit')} (verdict {report.get('verdict', 'unknown')})",
                   outcome.get("exit") == 0)]


# -- the section ------------------------------------------------------------------------------------
def _signed(value: float | None) -> str:
    return f"{value:+.2f}" if value is not None else "-"


def _table(columns: list[str], rows: list[list[Any]]) -> str:
    return BenchResult("", "", columns, rows).table()


def _count_cell(count: Count | None) -> str:
    return f"{count.start} / {count.settled} / {count.end} / {count.max}" if count else "-"


def _count_slopes(count: Count | None) -> str:
    if count is None:
        return "-"
    floor = f"{count.floor_rise:+.1f}" if count.floor_rise is not None else "-"
    return f"{_signed(count.slope_per_h)} / {floor}"


def _display(figures: ProcessFigures) -> str:
    if figures.engine:
        return figures.label
    return f"{figures.label} [{'Python' if 'resource tracker' in figures.label else 'server'}'s, context]"


def memory_table(processes: list[ProcessFigures]) -> str:
    return _table(["process", "pid", "RSS start MiB", "RSS end MiB", "RssAnon start MiB", "RssAnon end MiB",
                   "RSS slope MiB/h", "RSS 2nd half", "RSS after fill", "RSS floor slope", "RssAnon slope MiB/h",
                   "RssAnon 2nd half"],
                  [[_display(p), f"{len(p.pids)} processes" if len(p.pids) > 3 else ", ".join(map(str, p.pids)),
                    p.rss_start_mib, p.rss_end_mib, p.anon_start_mib, p.anon_end_mib, _signed(p.rss_slope),
                    _signed(p.rss_half_slope), _signed(p.rss_filled_slope), _signed(p.rss_floor_slope),
                    _signed(p.anon_slope),
                    _signed(p.anon_half_slope)] for p in processes])


def count_table(processes: list[ProcessFigures]) -> str:
    return _table(["process", "fds start / after warm-up / end / max", "fds slope /h / floor rise",
                   "threads start / after warm-up / end / max", "threads slope /h / floor rise", "samples"],
                  [[_display(p), _count_cell(p.fds), _count_slopes(p.fds), _count_cell(p.threads),
                    _count_slopes(p.threads), p.samples] for p in processes])


def run_table(levels: dict[str, Level | None]) -> str:
    def cell(value: float | None, name: str) -> str:
        if value is None:
            return "-"
        return f"{value:.0f}" if name.endswith("files") else f"{value:.1f}"

    return _table(["", "start", "after warm-up", "end of load", "max", "per hour", "floor, first sixth",
                   "floor, last sixth", "after exit"],
                  [[name, cell(lv.start, name), cell(lv.settled, name), cell(lv.end, name), cell(lv.max, name),
                    _signed(lv.slope_per_h), cell(lv.floor_first, name), cell(lv.floor_last, name),
                    cell(lv.after_exit, name)] for name, lv in levels.items() if lv is not None])


def _verdict_lines(report: dict[str, Any]) -> list[str]:
    verdicts = report.get("verdicts") or []
    failing = sum(bool(v.get("failing")) for v in verdicts)
    lines = [f"- verdicts: {f'{len(verdicts)} ({failing} failing)' if verdicts else 'none'}"]
    lines += [f"  - {'FAILING' if v.get('failing') else 'not failing'} [{v.get('state')}] at {v.get('at_s', 0):.0f} s: "
              f"{v.get('text', '')}" for v in verdicts]
    incidents = report.get("incidents") or []
    lines.append(f"- incidents: {'none' if not incidents else len(incidents)}")
    lines += [f"  - at {at:.0f} s: {what}" for at, what in incidents]
    return lines


HEAP_FIGURES = (("rssanon", "RssAnon"), ("malloc_in_use", "malloc: in use"),
                ("malloc_free", "malloc: free inside its arenas"), ("malloc_mmapped", "malloc: mmapped chunks"),
                ("sqlite_used", "SQLite's allocator"), ("python_blocks", "Python object allocator (blocks)"),
                ("python_arenas", "Python object allocator: arenas mapped"),
                ("python_allocated", "Python object allocator: bytes in blocks"))


def heap_lines(samples: list[dict[str, Any]], duration: float) -> list[str]:
    """The aggregator's heap probe (workers/heap_probe.py, a line a minute): each figure at the end
    of the warm-up and at the end, and its slope per hour over the second half, so a growth is put
    on malloc's callers, on fragmentation, on SQLite or on Python objects."""
    if len(samples) < 4:
        return ["not measured (no heap probe lines: ENGINE_HEAP_PROBE was not passed to the engine)"]
    t = np.array([s["t_s"] for s in samples], dtype=float)
    start = min(warmup_s(duration), t[len(t) // 2])
    rows = []
    for key, label in HEAP_FIGURES:
        if not all(key in s for s in samples):
            rows.append([label, "not measured", "-", "-", "-"])
            continue
        v = np.array([s[key] for s in samples], dtype=float)
        scale, unit = (1.0, "") if key == "python_blocks" else (MIB, " MiB")
        after = v[t >= start]
        half = t >= (start + t[-1]) / 2
        slope = float(stats.theilslopes(v[half] / scale, t[half] / 3600.0)[0]) if half.sum() >= 3 else None
        whole = float(stats.theilslopes(after / scale, t[t >= start] / 3600.0)[0]) if len(after) >= 3 else None
        rows.append([label, f"{after[0] / scale:,.2f}{unit}", f"{v[-1] / scale:,.2f}{unit}", _signed(whole),
                     _signed(slope)])
    return [f"From the aggregator's own heap probe (ENGINE_HEAP_PROBE=1; a sample a minute, {len(samples)} in all). "
            f"Slopes per hour (MiB/h, or blocks/h) after the {start / 60:.0f}-minute warm-up, and over the "
            "second half of that.", "",
            _table(["figure", "after warm-up", "end", "slope /h", "2nd-half slope /h"], rows)]


def engine_line(args: argparse.Namespace, duration: float, outcome: dict[str, Any]) -> str:
    report = outcome.get("report") or {}
    figures = report.get("figures") or {}
    load = (f"{figures['requests']:,} requests, {requests_per_s(outcome, duration):,.0f}/s"
            if "requests" in figures else "request count unknown (no report.json)")
    return (f"the real engine on the embedded default: bundled tritonserver (CPU), the smoke config's healthy "
            f"models and scenario mix, {args.workers} workers x {args.concurrency} plans in flight (closed loop), "
            f"system shared memory, the {args.profile} detector profile; {duration / 60:g} min of load ({load}), "
            f"set-up {outcome['setup_s']:.0f} s; exit status {outcome['exit']}, verdict {report.get('verdict', '-')}")


def requests_per_s(outcome: dict[str, Any], duration: float) -> float | None:
    report = outcome.get("report") or {}
    requests = (report.get("figures") or {}).get("requests")
    return requests / max(report.get("duration_s") or duration, 1.0) if requests is not None else None


def method_notes(args: argparse.Namespace, tracker: Tracker, duration: float) -> list[str]:
    warmup = warmup_s(duration)
    notes = [
        f"sampled every {args.interval:g} s from /proc and /dev/shm from the moment every first worker held its "
        f"regions; slopes are Theil-Sen over the samples after a {warmup:.0f} s warm-up (2nd half: over the second "
        "half of those alone; floor: over the per-minute minima, what stays allocated or open); fds = entries of "
        "/proc/pid/fd, threads = Threads of /proc/pid/status; floor rise = the floor's slope times the hours it "
        "was fitted over; /dev/shm = the run's files (workers' and python backend regions), bytes allocated in "
        "tmpfs; store = run.sqlite and run.sqlite-wal (the WAL keeps its largest size until the engine's exit "
        "folds it into run.sqlite: 'after exit' is the database alone)",
        "tritonserver, its python backend stubs (summed) and Python's resource tracker are shown as context, "
        f"not judged; the processes the workers start (crashing_client, {tracker.worker_children} seen) are "
        "short-lived and not sampled",
    ]
    notes += footprint.cpu_note(list(tracker.series.values()), min(600.0, duration / 5))
    return notes + (tracker.events or ["no engine process was replaced during the load"])


@dataclass
class Soak:
    """Everything the section and soak.json are made of."""

    measured: str
    command: str
    args: argparse.Namespace
    duration: float
    outcome: dict[str, Any]
    processes: list[ProcessFigures]
    levels: dict[str, Level | None]
    targets: list[Target]
    notes: list[str]
    seconds: float

    def markdown(self) -> str:
        report = self.outcome.get("report") or {}
        lines = [SOAK_BEGIN, f"## 5. Soak: the engine at full load for {self.duration / 60:g} min", "",
                 f"Written by `make soak` (`{self.command}`); the same figures are in soak.json. `make bench` "
                 "keeps this section as it is.", "",
                 f"- measured: {self.measured}, commit {_commit()}, {self.seconds / 60:.1f} minutes",
                 f"- machine: {_machine()}; the engine and the server share these cores",
                 f"- {engine_line(self.args, self.duration, self.outcome)}", "", "### Targets", ""]
        lines += [f"- {'met' if t.met else '**missed**'}: {t.name}: {t.goal}; measured {t.measured}"
                  for t in self.targets]
        lines += ["", "### Memory per process", "", memory_table(self.processes), "",
                  "### Open files and threads per process", "", count_table(self.processes), "",
                  "### The run: /dev/shm and the store", "", run_table(self.levels), "",
                  "### Where the aggregator's memory goes", "", *heap_lines(self.outcome.get("heap") or [],
                                                                             self.duration), "",
                  "### The engine's verdicts and incidents", "", *_verdict_lines(report), "",
                  "### Notes", "", *[f"- {note}" for note in self.notes], SOAK_END]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        report = self.outcome.get("report") or {}
        return {
            "measured": self.measured, "commit": _commit(), "machine": _machine(), "command": self.command,
            "settings": {k: getattr(self.args, k)
                         for k in ("minutes", "workers", "concurrency", "interval", "profile")},
            "engine": {"exit": self.outcome.get("exit"), "verdict": report.get("verdict"),
                       "requests": (report.get("figures") or {}).get("requests"),
                       "requests_per_s": requests_per_s(self.outcome, self.duration),
                       "setup_s": self.outcome.get("setup_s"), "run_id": self.outcome.get("run_id")},
            "processes": [dataclasses.asdict(p) for p in self.processes],
            "run": {name: dataclasses.asdict(lv) if lv else None for name, lv in self.levels.items()},
            "targets": [dataclasses.asdict(t) for t in self.targets],
            "verdicts": [{k: v.get(k) for k in ("state", "failing", "detector", "kind", "subject", "at_s", "text")}
                         for v in report.get("verdicts") or []],
            "incidents": report.get("incidents") or [], "notes": self.notes, "seconds": self.seconds,
        }


def judge(args: argparse.Namespace, tracker: Tracker, duration: float, outcome: dict[str, Any],
          measured_notes: list[str], seconds: float, command: str, measured: str) -> Soak:
    rank = {"coordinator": 0, "aggregator": 1, "monitor": 2}
    order = sorted((s for s in tracker.series.values() if s.rss),
                   key=lambda s: (not s.engine, rank.get(s.label.split(" (#")[0], 3), s.first_s, s.label))
    filled = retention_filled_s(args.profile)
    processes = [process_figures(s, duration, args.interval, filled) for s in order]
    levels = run_figures(tracker, duration, outcome)
    targets = [t for p in processes if p.engine for t in process_targets(p, filled)] + run_targets(levels, outcome)
    notes = method_notes(args, tracker, duration) + measured_notes
    return Soak(measured, command, args, duration, outcome, processes, levels, targets, notes, seconds)


# -- BENCHMARKS.md ----------------------------------------------------------------------------------
def splice(text: str, section: str) -> str:
    """`text` with its soak section replaced by `section` (markers included), or `section` appended;
    nothing else of the file changes."""
    begin = text.find(SOAK_BEGIN)
    end = text.find(SOAK_END, begin + 1) if begin >= 0 else -1
    if begin >= 0 and end >= 0:
        return text[:begin] + section + text[end + len(SOAK_END):]
    if not text.strip():
        return section + "\n"
    return text.rstrip("\n") + "\n\n" + section + "\n"


def write(soak: Soak, out: Path) -> tuple[Path, Path]:
    out.write_text(splice(out.read_text() if out.exists() else "", soak.markdown()))
    data = out.with_name("soak.json")
    data.write_bytes(orjson.dumps(soak.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
                                  | orjson.OPT_NON_STR_KEYS))
    return out, data


# -- command line -----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=120.0, help="minutes of load (default 120)")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes (default 2: with the server, they keep two cores busy)")
    parser.add_argument("--concurrency", type=int, default=2, help="plans in flight per worker (default 2)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between two samples (default 10)")
    parser.add_argument("--profile", choices=("smoke", "long"), default="long",
                        help="detector profile (default long, what a run of hours uses: 60 s windows, 5 s resource "
                             "samples, a 10-minute warm-up; smoke is calibrated for 5-20 minute runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md",
                        help="the Markdown file the section goes into (default BENCHMARKS.md); "
                             "soak.json goes beside it")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    parser.add_argument("--keep", action="store_true",
                        help="keep the engine's log, config, run directory and every sample (samples.json)")
    args = parser.parse_args(argv)
    args.detail = True  # footprint's progress lines with fds, threads, /dev/shm and the store
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join(["python tools/soak/real.py", *(sys.argv[1:] if argv is None else argv)])
    started = time.monotonic()
    measured = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    notes: list[str] = []
    # The aggregator writes its heap figures once a minute (workers/heap_probe.py): where its
    # memory goes, if it grows.
    os.environ.setdefault("ENGINE_HEAP_PROBE", "1")
    tracker, duration, outcome = footprint.collect(args, notes)
    soak = judge(args, tracker, duration, outcome, notes, time.monotonic() - started, command, measured)
    print(soak.markdown(), flush=True)
    if not args.no_write:
        markdown, data = write(soak, args.out)
        print(f"wrote the soak section of {markdown} and {data}")
    missed = [t.name for t in soak.targets if not t.met]
    if missed:
        print("targets missed: " + "; ".join(missed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
