"""python -m model_repo_gen --out DIR [options]: write a model repository for stress runs."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Sequence

from .catalog import build_spec
from .options import ALL_MODELS, DEFAULT_MODELS, FAULTY_MODELS, ONNX_MODELS, TORCH_MODELS, RepoOptions
from .writer import generate_repository

_FIELDS = {f.name: f for f in dataclasses.fields(RepoOptions)}


def _help(name: str) -> str:
    field = _FIELDS[name]
    default = field.default
    return f"{field.metadata['help']} (default: {default})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model_repo_gen",
                                description="Write a Triton model repository of generated models: identity, zero, "
                                            "sequence accumulators, decoupled, and deliberately faulty models.")
    p.add_argument("--out", metavar="DIR", help="repository directory (created; a directory this tool wrote "
                                                "before is updated, any other non-empty one is refused)")
    p.add_argument("--models", metavar="A,B,...", default=",".join(DEFAULT_MODELS),
                   help="comma-separated model names (default: the stress-run set); --list shows all")
    p.add_argument("--list", action="store_true", help="list the model names and what each is, then exit")
    p.add_argument("--instance-count", type=int, default=_FIELDS["instance_count"].default,
                   help=_help("instance_count"))
    p.add_argument("--instance-kind", choices=_FIELDS["instance_kind"].metadata["choices"],
                   default=_FIELDS["instance_kind"].default, help=_help("instance_kind"))
    p.add_argument("--max-batch-size", type=int, default=_FIELDS["max_batch_size"].default,
                   help=_help("max_batch_size"))
    p.add_argument("--no-dynamic-batching", action="store_true", help="no dynamic batching on the stateless models")
    p.add_argument("--sequence-max-batch-size", type=int, default=_FIELDS["sequence_max_batch_size"].default,
                   help=_help("sequence_max_batch_size"))
    p.add_argument("--sequence-strategy", choices=_FIELDS["sequence_strategy"].metadata["choices"],
                   default=_FIELDS["sequence_strategy"].default, help=_help("sequence_strategy"))
    p.add_argument("--sequence-idle-timeout", type=float, metavar="SECONDS",
                   default=_FIELDS["sequence_idle_timeout"].default, help=_help("sequence_idle_timeout"))
    p.add_argument("--execute-delay-ms", type=float, default=_FIELDS["execute_delay_ms"].default,
                   help=_help("execute_delay_ms"))
    p.add_argument("--zero-delay-ms", type=float, default=_FIELDS["zero_delay_ms"].default,
                   help=_help("zero_delay_ms"))
    p.add_argument("--slow-zero-delay-ms", type=float, default=_FIELDS["slow_zero_delay_ms"].default,
                   help=_help("slow_zero_delay_ms"))
    return p


def _list() -> str:
    rows = []
    for name in ALL_MODELS:
        spec = build_spec(name, RepoOptions())
        what = "faulty" if name in FAULTY_MODELS else "needs onnx" if name in ONNX_MODELS else \
            "needs torch" if name in TORCH_MODELS else "healthy"
        tensors = ", ".join(f"{t.name}:{t.datatype}" for t in spec.inputs)
        rows.append(f"{name:<26} {spec.kind:<10} {spec.backend:<12} batch {spec.max_batch_size:<3} {what:<12} {tensors}")
    return "\n".join(rows)


def _options(args: argparse.Namespace) -> RepoOptions:
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    checks = [("--instance-count", args.instance_count, 1), ("--max-batch-size", args.max_batch_size, 1),
              ("--sequence-max-batch-size", args.sequence_max_batch_size, 1)]
    for flag, value, low in checks:
        if value < low:
            raise ValueError(f"{flag} {value}: must be {low} or more")
    for flag, value in (("--execute-delay-ms", args.execute_delay_ms), ("--zero-delay-ms", args.zero_delay_ms),
                        ("--slow-zero-delay-ms", args.slow_zero_delay_ms)):
        if value < 0:
            raise ValueError(f"{flag} {value:g}: must be 0 or more")
    if args.sequence_idle_timeout <= 0:
        raise ValueError(f"--sequence-idle-timeout {args.sequence_idle_timeout:g}: must be greater than zero")
    if not models:
        raise ValueError("--models: name at least one model")
    return RepoOptions(
        models=models, instance_count=args.instance_count, instance_kind=args.instance_kind,
        max_batch_size=args.max_batch_size, dynamic_batching=not args.no_dynamic_batching,
        sequence_max_batch_size=args.sequence_max_batch_size, sequence_strategy=args.sequence_strategy,
        sequence_idle_timeout=args.sequence_idle_timeout, execute_delay_ms=args.execute_delay_ms,
        zero_delay_ms=args.zero_delay_ms, slow_zero_delay_ms=args.slow_zero_delay_ms,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print(_list())
        return 0
    if not args.out:
        parser.error("--out DIR is required (or --list)")
    try:
        specs = generate_repository(args.out, _options(args))
    except (ValueError, ImportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(specs)} models to {args.out}: {', '.join(s.name for s in specs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
