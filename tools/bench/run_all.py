"""Run the engine's benchmarks one after the other and write BENCHMARKS.md and benchmarks.json.

    python tools/bench/run_all.py [--only client_cost zero_copy telemetry footprint] [--footprint-minutes 6]
                                  [--out-dir .]

With --only, the benchmarks not run keep their last figures (from benchmarks.json, each with the
date and commit it was measured at), so one benchmark can be measured again without the others.

Each benchmark runs its compared variants against the same embedded server in the same
invocation and reports ratios (the machine is noisy: absolute figures move from run to run,
ratios taken side by side much less). `make bench` runs this with the defaults (under 15 minutes);
the footprint's 20-minute figure is `--footprint-minutes 20`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import orjson

from common import ROOT, BenchResult, Target  # isort: skip

BENCHMARKS = ("client_cost", "user_load_cost", "vs_perf_analyzer", "check_cost", "zero_copy", "telemetry", "footprint")
# The soak's section (tools/soak/real.py, `make soak`) lives between these lines: hours of load that
# `make bench` does not rerun, so rewriting the file keeps it as it was.
SOAK_BEGIN, SOAK_END = "<!-- soak:begin -->", "<!-- soak:end -->"


def soak_section(text: str) -> str | None:
    """The soak's section of a BENCHMARKS.md, its marker lines included; None when it has none."""
    begin = text.find(SOAK_BEGIN)
    end = text.find(SOAK_END, begin + 1)
    if begin < 0 or end < 0:
        return None
    return text[begin:end + len(SOAK_END)]


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    memory = int(Path("/proc/meminfo").read_text().split()[1]) // (1024 * 1024)
    return f"{os.cpu_count()} cores ({cpu}), {memory} GiB, Python {platform.python_version()}, {platform.system()}"


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _arguments(module: object, overrides: dict[str, object]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)  # type: ignore[attr-defined]
    args = parser.parse_args([])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def kept_results(out_dir: Path, measured: set[str]) -> list[BenchResult]:
    """The previous figures of the benchmarks not measured this time (benchmarks.json), each marked
    with when and at which commit it was measured; none where there is no such file."""
    try:
        document = orjson.loads((out_dir / "benchmarks.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return []
    kept = []
    for entry in document.get("results", []):
        if entry.get("name") in measured:
            continue
        try:
            result = BenchResult(**{**entry, "targets": [Target(**t) for t in entry.get("targets", [])]})
        except TypeError:  # written by another version of the benchmarks: not kept
            continue
        result.measured = result.measured or f"{document.get('measured', '?')}, commit {document.get('commit', '?')}"
        kept.append(result)
    return kept


def write_reports(results: list[BenchResult], failures: dict[str, str], out_dir: Path, command: str,
                  elapsed: float) -> tuple[Path, Path]:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        "# Benchmarks", "",
        "The engine's own speed and cost, measured side by side (issue 7). Written by `make bench`",
        f"(`{command}`); do not edit by hand, run it again.", "",
        f"- measured: {stamp}, commit {_commit()}, {elapsed / 60:.1f} minutes",
        f"- machine: {_machine()}; client and server share these cores",
        "- each benchmark runs its variants one after the other against the same embedded server, in one",
        "  invocation; compare ratios, not absolute figures, across runs",
        "", "## Targets", "",
    ]
    for result in results:
        for target in result.targets:
            header.append(f"- {'met' if target.met else '**missed**'}: {target.name} ({result.name}): "
                          f"{target.goal}; measured {target.measured}")
    for name, error in failures.items():
        header.append(f"- **failed to run**: {name}: {error}")
    header += ["", "## How to reproduce", "",
               "    make bench                                   # all of them, writes this file and benchmarks.json",
               "    python tools/bench/run_all.py --only client_cost   # one again; the others keep their figures",
               "    python tools/bench/vs_perf_analyzer.py         # beside perf_analyzer (installed into .venv-pa)",
               "    python tools/bench/footprint.py --minutes 20  # the 20-minute footprint figure",
               "    python tools/bench/client_cost.py --help       # each benchmark also runs alone", ""]
    body = [result.report() + f"\n\n({result.seconds:.0f} s"
            + (f"; measured {result.measured}, kept from the last run" if result.measured else "") + ")\n"
            for result in results]
    markdown = out_dir / "BENCHMARKS.md"
    soak = soak_section(markdown.read_text()) if markdown.exists() else None
    markdown.write_text("\n".join(header) + "\n" + "\n".join(body) + (f"\n{soak}\n" if soak else ""))
    document = {"measured": stamp, "commit": _commit(), "machine": _machine(), "command": command,
                "results": [r.to_json() for r in results], "failures": failures}
    data = out_dir / "benchmarks.json"
    data.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return markdown, data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--footprint-minutes", type=float, default=6.0,
                        help="length of the footprint run (default 6, so that all fits in 15 minutes; the "
                             "issue's figure is 20)")
    parser.add_argument("--out-dir", type=Path, default=ROOT, help="where BENCHMARKS.md and benchmarks.json go")
    args = parser.parse_args()
    started = time.monotonic()
    results: list[BenchResult] = []
    failures: dict[str, str] = {}
    for name in args.only:
        module = importlib.import_module(name)
        overrides: dict[str, object] = {"minutes": args.footprint_minutes} if name == "footprint" else {}
        print(f"== {name}", flush=True)
        try:
            result = module.run(_arguments(module, overrides))
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            failures[name] = f"{type(exc).__name__}: {exc}"
            print(f"   FAILED: {failures[name]}", flush=True)
            continue
        results.append(result)
        print(result.report() + "\n", flush=True)
    command = "python tools/bench/run_all.py " + " ".join(sys.argv[1:])
    measured_now = {r.name for r in results} | set(failures)
    kept = kept_results(args.out_dir, measured_now)
    ordered = sorted([*results, *kept], key=lambda r: BENCHMARKS.index(r.name) if r.name in BENCHMARKS else 99)
    markdown, data = write_reports(ordered, failures, args.out_dir, command.strip(), time.monotonic() - started)
    print(f"wrote {markdown} and {data}")
    missed = [t.name for r in results for t in r.targets if not t.met]
    if missed:
        print("targets missed: " + "; ".join(missed))
    return 1 if failures else 0  # a missed target is a finding written down, not a failure to run


if __name__ == "__main__":
    sys.exit(main())
