"""python -m model_repo_gen --out DIR [options]: write a model repository for stress runs.

Every knob of RepoOptions and FaultOptions is a flag (``instance_count`` -> ``--instance-count``,
``faults.wrong_every`` -> ``--wrong-every``), with the help text and default its field declares."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .catalog import build_spec
from .options import (
    ALL_MODELS,
    DEFAULT_MODELS,
    FAULTY_MODELS,
    ONNX_MODELS,
    TORCH_MODELS,
    FaultOptions,
    RepoOptions,
)
from .validate import OptionError
from .writer import generate_repository

# Fields that are not a plain scalar flag: models is a comma list, dynamic_batching a negative switch.
_SPECIAL = ("models", "dynamic_batching", "faults")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage block: the caller sees what was wrong and where to look.
        self.exit(2, f"error: {message} (see python -m model_repo_gen --help)\n")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_field(group: argparse._ArgumentGroup, field: dataclasses.Field, dest: str) -> None:
    meta = field.metadata
    kind = type(field.default)
    help_text = f"{meta['help']} (default: {field.default:g})" if kind is float else \
        f"{meta['help']} (default: {field.default})"
    kwargs: dict[str, Any] = {"dest": dest, "default": field.default, "help": help_text, "type": kind}
    if "choices" in meta:
        kwargs["choices"] = meta["choices"]
    elif meta.get("unit") == "duration":
        kwargs["metavar"] = "SECONDS"
    else:
        kwargs["metavar"] = "N" if kind is int else "X"
    group.add_argument(_flag(field.name), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m model_repo_gen",
                description="Write a Triton model repository of generated models: identity, zero, sequence "
                            "accumulators, decoupled, and deliberately faulty models (python backend; ONNX and "
                            "TorchScript variants when onnx / torch are installed).",
                epilog="A directory this tool wrote before is regenerated (models it no longer names are removed); "
                       "any other non-empty directory is refused. Errors exit with status 2.")
    p.add_argument("--out", metavar="DIR", help="repository directory to write (created if missing)")
    p.add_argument("--list", action="store_true", help="list the model names and what each is, then exit")
    p.add_argument("--models", metavar="A,B,...", default=",".join(DEFAULT_MODELS),
                   help=f"comma-separated model names (default: {','.join(DEFAULT_MODELS)}); --list shows all")
    knobs = p.add_argument_group("model knobs")
    for field in dataclasses.fields(RepoOptions):
        if field.name not in _SPECIAL:
            _add_field(knobs, field, field.name)
    knobs.add_argument("--no-dynamic-batching", action="store_true",
                       help="no dynamic_batching on the batching stateless models (default: dynamic batching on)")
    faults = p.add_argument_group("faulty-model knobs (used only by the faulty models generated)")
    for field in dataclasses.fields(FaultOptions):
        _add_field(faults, field, "fault_" + field.name)
    return p


def _list() -> str:
    rows = []
    for name in ALL_MODELS:
        spec = build_spec(name, RepoOptions())
        what = "faulty" if name in FAULTY_MODELS else "needs onnx" if name in ONNX_MODELS else \
            "needs torch" if name in TORCH_MODELS else "healthy"
        tensors = ", ".join(f"{t.name}:{t.datatype}" for t in spec.inputs)
        rows.append(f"{name:<26} {spec.kind:<10} {spec.backend:<12} batch {spec.max_batch_size:<3} "
                    f"{what:<12} {tensors}")
    return "\n".join(rows)


def _options(args: argparse.Namespace) -> RepoOptions:
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if not models:
        raise ValueError("--models: name at least one model")
    faults = FaultOptions(**{f.name: getattr(args, "fault_" + f.name) for f in dataclasses.fields(FaultOptions)})
    plain = {f.name: getattr(args, f.name) for f in dataclasses.fields(RepoOptions) if f.name not in _SPECIAL}
    return RepoOptions(models=models, dynamic_batching=not args.no_dynamic_batching, faults=faults, **plain)


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
    except OptionError as exc:
        flag = _flag(exc.key.rsplit(".", 1)[-1])
        print(f"error: {flag} {exc.value:g}: {exc.problem}" if isinstance(exc.value, float)
              else f"error: {flag} {exc.value}: {exc.problem}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for spec in specs:
        print(f"wrote {args.out}/{spec.name}: {spec.kind}, {spec.backend}, {spec.instance_count} instance(s), "
              f"max_batch_size {spec.max_batch_size}")
    print(f"{len(specs)} models in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
