"""Command line: `python -m engine [run] --config FILE`, `gen-repo`, `show-config`, `cleanup`,
`report RUN_DIR`.

Exit status: 0 pass, 1 a failing check, 2 bad config or set-up failure (never a traceback for
input the user can fix).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from workers.plans import PlanError
from workers.user_load import LoadError

from .config import Config, ConfigError, config_to_dict, load_config, parse_duration, resolve_config_path
from .server import ServerSetupError

EXIT_PASS, EXIT_FAIL, EXIT_SETUP = 0, 1, 2
SUBCOMMANDS = ("run", "gen-repo", "show-config", "cleanup", "report", "perf")


def _add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default="smoke.toml", metavar="FILE",
                        help="TOML config; a name without a file here resolves to a shipped config "
                             "(smoke, long, very-long, perf). Default: smoke.toml")


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("overrides (win over the config file)")
    group.add_argument("--duration", metavar="D", help='run duration, e.g. "90s", "7h", "6d12h"')
    group.add_argument("--workers", type=int, metavar="N", help="number of worker processes")
    group.add_argument("--seed", type=int, metavar="N", help="run seed (every random choice derives from it)")
    group.add_argument("--url", metavar="HOST:PORT", help="attach to the running server at this HTTP address")
    group.add_argument("--results-dir", metavar="DIR", help="where the run directory is created")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="Endurance, stress and perf-regression engine for NVIDIA Triton Inference Server. "
                    "Without a subcommand, `run` is implied.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="prepare the models, start or attach to the server, run the config",
                         description="Generate the model repository, launch the bundled tritonserver (or the "
                                     "configured binary, or attach to [server] url), check that every model answers "
                                     "one validated request, drive the configured scenarios with the configured "
                                     "workers for the run's duration, print the per-scenario table, and stop "
                                     "everything it started. Exit status: 0 pass, 1 failures, 2 bad config or set-up.")
    _add_config_argument(run)
    _add_overrides(run)
    gen = sub.add_parser("gen-repo", help="write the config's model repository to a directory",
                         description="Write the models of the config's [models] section to DIR "
                                     "(python -m model_repo_gen offers the same with flags).")
    _add_config_argument(gen)
    gen.add_argument("--out", required=True, type=Path, metavar="DIR", help="repository directory to write")
    show = sub.add_parser("show-config", help="print the resolved config (defaults filled in) as JSON",
                          description="Load, validate and print the config with every default filled in.")
    _add_config_argument(show)
    _add_overrides(show)
    clean = sub.add_parser("cleanup", help="remove what crashed runs left in /dev/shm (and on a server)",
                           description="Unlink the shared-memory regions a run's workers created and the "
                                       "python-backend regions of the server it launched; with --url, also "
                                       "unregister the run's regions from that server. Without RUN_ID: every "
                                       "run's leftovers (only when no run is going on).")
    clean.add_argument("run_id", nargs="?", metavar="RUN_ID", help="the run (its directory name under results/)")
    clean.add_argument("--url", metavar="HOST:PORT", help="gRPC address of a server to unregister regions from")
    report = sub.add_parser("report", help="rebuild a run's report from its store (also of a crashed run)",
                            description="Read RUN_DIR/run.sqlite (never written to), print the summary (the "
                                        "per-scenario table, latency per model, incidents, verdicts) and write "
                                        "report.json, report.html and stress_report.txt into RUN_DIR. "
                                        "Exit status: 0 pass, "
                                        "1 fail (or a run that did not end normally), 2 no readable store.")
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run's directory (results/<run id>)")
    report.add_argument("--no-write", action="store_true", help="print only; write no file")
    _add_perf_parser(sub)
    return parser


def _add_perf_parser(sub: argparse._SubParsersAction) -> None:
    perf = sub.add_parser(
        "perf", help="perf-regression sweep (throughput, p50-p99, server split), optionally gated on a baseline",
        description="Generate the [perf] models, launch the bundled tritonserver (or attach to [server] url), and "
                    "measure every point of models x protocols x shm modes x batch sizes x loads (concurrency "
                    "levels, then request rates): a warm-up, then time windows until the last stability_windows "
                    "agree within stability_tolerance on throughput and p99 (after max_windows the point is "
                    "reported unstable). Writes perf.json, perf.csv (perf_analyzer's columns) and, for request "
                    "rates, perf_request_rate.csv into results/<run id>/ and prints a table. List options take "
                    "comma-separated values and replace the config's. Exit status: 0 pass, 1 a regression against "
                    "--baseline or a point that could not be measured (or an interrupted sweep), 2 bad config, "
                    "bad baseline file or set-up failure. PERF.md has the details.")
    perf.add_argument("--config", "-c", default="perf.toml", metavar="FILE",
                      help="TOML config; a name without a file here resolves to a shipped config. Default: perf.toml")
    gate = perf.add_argument_group("baseline gate")
    gate.add_argument("--baseline", type=Path, metavar="FILE",
                      help="compare with this stored perf document (a perf.json or a --save-baseline file); "
                           "exit 1 when a metric regressed beyond its tolerance ([perf] baseline_*_tolerance)")
    gate.add_argument("--save-baseline", type=Path, metavar="FILE",
                      help="write this run's document to FILE when the sweep completes (after any comparison)")
    gate.add_argument("--ignore-unstable", action="store_true",
                      help="regressions of points that were unstable (here or in the baseline) are shown but do "
                           "not fail the gate")
    sweep = perf.add_argument_group("sweep overrides (win over [perf])")
    sweep.add_argument("--models", metavar="LIST", help="models, e.g. identity_fp32,identity_int32")
    sweep.add_argument("--protocols", metavar="LIST", help="grpc, grpc_stream, http")
    sweep.add_argument("--shm", metavar="LIST", help="shared memory modes: none, system, cuda (skipped without a GPU)")
    sweep.add_argument("--batch-sizes", metavar="LIST", help="batch sizes, e.g. 1,4")
    sweep.add_argument("--concurrency", metavar="LIST", help="closed-loop levels (requests in flight), e.g. 1,16")
    sweep.add_argument("--request-rates", metavar="LIST", help="open-loop levels (requests/s), e.g. 100,500")
    sweep.add_argument("--input-elements", metavar="N", help="elements of the input tensor per batch item "
                                                             "(100000 with identity_int32: the L0_perf_pyclients test)")
    sweep.add_argument("--window", metavar="D", help='measurement window, e.g. "5s"')
    sweep.add_argument("--warmup", metavar="D", help='warm-up per point (not counted), e.g. "2s"')
    sweep.add_argument("--stability-windows", metavar="N", help="windows that must agree")
    sweep.add_argument("--stability-tolerance", metavar="F", help="how closely, e.g. 0.1 for 10 %%")
    sweep.add_argument("--max-windows", metavar="N", help="windows before a point is reported unstable")
    run = perf.add_argument_group("overrides (win over the config file)")
    run.add_argument("--duration", metavar="D", help='upper bound for the whole sweep ([run] duration), e.g. "10m"')
    run.add_argument("--seed", type=int, metavar="N", help="run seed (the input data derives from it)")
    run.add_argument("--url", metavar="HOST:PORT", help="attach to the running server at this HTTP address")
    run.add_argument("--results-dir", metavar="DIR", help="where the run directory is created")


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    # `python -m engine --config X` means `run`: insert it unless a subcommand or help is asked for.
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "run")
    return build_parser().parse_args(argv)


def _apply_overrides(config: Config, args: argparse.Namespace) -> Config:
    run, workers, server = config.run, config.workers, config.server
    if getattr(args, "duration", None):
        try:
            seconds = parse_duration(args.duration)
        except ValueError as exc:
            raise ConfigError(f"--duration: {exc}") from None
        if seconds <= 0:
            raise ConfigError(f"--duration {args.duration!r}: must be longer than zero")
        run = dataclasses.replace(run, duration=seconds)
    if getattr(args, "seed", None) is not None:
        if args.seed < 0:
            raise ConfigError(f"--seed {args.seed}: must be 0 or more")
        run = dataclasses.replace(run, seed=args.seed)
    if getattr(args, "results_dir", None):
        run = dataclasses.replace(run, results_dir=args.results_dir)
    if getattr(args, "workers", None) is not None:
        if not 1 <= args.workers <= 1024:
            raise ConfigError(f"--workers {args.workers}: must be from 1 to 1024")
        workers = dataclasses.replace(workers, count=args.workers)
    if getattr(args, "url", None):
        server = dataclasses.replace(server, url=args.url, binary="", http_port=0, grpc_port=0, metrics_port=0)
    return dataclasses.replace(config, run=run, workers=workers, server=server)


def _load(args: argparse.Namespace) -> Config:
    return _apply_overrides(load_config(resolve_config_path(args.config)), args)


def _cmd_show_config(args: argparse.Namespace) -> int:
    sys.stdout.write(orjson.dumps(config_to_dict(_load(args)), option=orjson.OPT_INDENT_2).decode() + "\n")
    return EXIT_PASS


def _cmd_gen_repo(args: argparse.Namespace) -> int:
    from model_repo_gen import generate_repository

    config = load_config(resolve_config_path(args.config))
    try:
        specs = generate_repository(args.out, config.models)
    except (ValueError, OSError) as exc:
        raise ConfigError(str(exc)) from None
    print(f"wrote {len(specs)} models to {args.out}: {', '.join(s.name for s in specs)}")
    return EXIT_PASS


def _cmd_cleanup(args: argparse.Namespace) -> int:
    import tritonclient.grpc as grpcclient

    from shm import cleanup, cleanup_all_runs, is_server_region

    client = grpcclient.InferenceServerClient(args.url) if args.url else None
    try:
        report = cleanup(args.run_id, client) if args.run_id else cleanup_all_runs(client)
    finally:
        if client is not None:
            client.close()
    backend = [p for p in Path("/dev/shm").iterdir() if is_server_region(p.name, args.run_id or None)]
    for region in backend:  # the python-backend regions of a server the run launched
        region.unlink(missing_ok=True)
    print(f"unregistered {len(report.unregistered)} regions, unlinked {len(report.unlinked)} worker regions "
          f"and {len(backend)} server regions" + (f"; problems: {'; '.join(report.errors)}" if report.errors else ""))
    return EXIT_PASS if not report.errors else EXIT_FAIL


def _cmd_report(args: argparse.Namespace) -> int:
    import sqlite3

    from .report import load_report, render_summary, write_reports

    try:
        report = load_report(args.run_dir)
    except (FileNotFoundError, ValueError, sqlite3.Error) as exc:
        print(f"report error: {args.run_dir}: {exc}", file=sys.stderr)
        return EXIT_SETUP
    sys.stdout.write(render_summary(report))
    if not args.no_write:
        written = write_reports(args.run_dir, report, ("json", "html", "text"))
        print(f"wrote {', '.join(str(p) for p in written)}")
    return report.exit_code


_PERF_KEYS = ("models", "protocols", "shm_modes", "batch_sizes", "concurrency", "request_rates", "input_elements",
              "window", "warmup", "stability_windows", "stability_tolerance", "max_windows")


def _cmd_perf(args: argparse.Namespace) -> int:
    from .perf import BaselineError, PerfOptions, run_perf
    from .perf.overrides import apply_perf_overrides

    values = {key: getattr(args, "shm" if key == "shm_modes" else key) for key in _PERF_KEYS}
    config = apply_perf_overrides(_load(args), values)
    options = PerfOptions(baseline=args.baseline, save_baseline=args.save_baseline,
                          ignore_unstable=args.ignore_unstable)
    try:
        return run_perf(config, options)
    except BaselineError as exc:
        print(f"baseline error: {exc}", file=sys.stderr)
        return EXIT_SETUP


def _cmd_run(args: argparse.Namespace) -> int:
    from .coordinator import run

    return run(_load(args))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    handlers = {"run": _cmd_run, "gen-repo": _cmd_gen_repo, "show-config": _cmd_show_config,
                "cleanup": _cmd_cleanup, "report": _cmd_report, "perf": _cmd_perf}
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_SETUP
    except ServerSetupError as exc:
        print(f"server error: {exc}", file=sys.stderr)
        return EXIT_SETUP
    except (LoadError, PlanError) as exc:
        print(f"setup error: {exc}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAIL
