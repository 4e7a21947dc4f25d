"""Command-line values for [perf] keys (`--concurrency 1,16`, `--window 2s`), validated by the
same rules as the config file: each value is put in place of the file's and the section is read
again, so a bad value fails with the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, PerfSection, config_from_dict, config_to_dict

SOURCE = Path("command line")  # how errors name where a value came from


def _parse(name: str, text: str) -> Any:
    """The TOML value a command-line text stands for, by the field's type."""
    field = next(f for f in dataclasses.fields(PerfSection) if f.name == name)
    hint = typing.get_type_hints(PerfSection)[name]
    is_tuple = typing.get_origin(hint) is tuple
    item = typing.get_args(hint)[0] if is_tuple else hint
    parts = [p.strip() for p in text.split(",") if p.strip()] if is_tuple else [text.strip()]

    def one(part: str) -> Any:
        if field.metadata.get("unit") == "duration" or item is str:
            return part  # durations keep their text: "2s", "500ms"
        try:
            return int(part) if item is int else float(part)
        except ValueError:
            kind = "an integer" if item is int else "a number"
            raise ConfigError(f"--{name.replace('_', '-')} {text!r}: {part!r} is not {kind}") from None

    values = [one(p) for p in parts]
    return values if is_tuple else values[0]


def apply_perf_overrides(config: Config, overrides: Mapping[str, str | None]) -> Config:
    """`config` with the given [perf] keys replaced (None = not given)."""
    given = {name: text for name, text in overrides.items() if text is not None}
    if not given:
        return config
    section = config_to_dict(config)["perf"]
    for name, text in given.items():
        section[name] = _parse(name, text)
    perf = config_from_dict({"perf": section}, source=SOURCE).perf
    return dataclasses.replace(config, perf=perf)
