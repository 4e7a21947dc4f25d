"""Turn a TOML table into a frozen dataclass, driven by type hints and field metadata.

Metadata keys (see model_repo_gen/options.py): help, min, max, min_exclusive, choices (for a
tuple: of each item; for a dict: of each key), unit = "duration".
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from ._durations import parse_duration


class ConfigError(Exception):
    """A config problem, said in one line: file, key, value, and what is allowed."""


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def suggest(name: str, known: list[str]) -> str | None:
    """The known name the user most likely meant: a prefix match first (a shortened key), then
    the closest spelling."""
    prefixed = [k for k in known if k.startswith(name) and name]
    if len(prefixed) == 1:
        return prefixed[0]
    close = difflib.get_close_matches(name, known, n=1)
    return close[0] if close else None


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


class Reader:
    def __init__(self, source: str) -> None:
        self.source = source  # the file name, for messages

    def fail(self, key: str, value: Any, allowed: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key} = {_show(value)}: {allowed}")

    def read(self, cls: type, table: Any, key: str, overrides: dict[str, Any] | None = None) -> Any:
        """An instance of dataclass `cls` from `table` (a dict); `key` is the dotted path for messages."""
        if not isinstance(table, dict):
            raise ConfigError(f"{self.source}: [{key}] must be a table, got {_type_name(table)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        for name in table:
            if name not in fields:
                raise self._unknown(key, name, table[name], list(fields))
        values = dict(overrides or {})
        for name, value in table.items():
            values[name] = self.convert(hints[name], value, f"{key}.{name}", fields[name].metadata)
        missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{self.source}: [{key}] needs {', '.join(missing)}")
        return cls(**values)

    def _unknown(self, key: str, name: str, value: Any, known: list[str]) -> ConfigError:
        close = suggest(name, known)
        hint = f"; did you mean '{close}'?" if close else f"; known keys: {', '.join(known)}"
        where = f"[{key}] " if key else ""
        return ConfigError(f"{self.source}: unknown key {where}{name} = "
                           f"{_show(value) if not isinstance(value, dict) else '{...}'}{hint}")

    def convert(self, hint: Any, value: Any, key: str, meta: Any) -> Any:
        origin = typing.get_origin(hint)
        if dataclasses.is_dataclass(hint):
            return self.read(hint, value, key)
        if origin is tuple:
            item = typing.get_args(hint)[0]
            if not isinstance(value, list):
                raise self.fail(key, value, f"expected an array, got {_type_name(value)}")
            if dataclasses.is_dataclass(item):  # an array of tables: [[load]], inputs = [{...}, ...]
                return tuple(self.read(item, v, f"{key}[{i}]") for i, v in enumerate(value))
            return tuple(self._scalar(item, v, f"{key}[{i}]", meta) for i, v in enumerate(value))
        if origin is dict:
            _, item = typing.get_args(hint)
            if not isinstance(value, dict):
                raise self.fail(key, value, f"expected a table, got {_type_name(value)}")
            choices = meta.get("choices")
            out = {}
            for name, v in value.items():
                if choices is not None and name not in choices:
                    raise self._unknown(key, name, v, list(choices))
                out[name] = self._scalar(item, v, f"{key}.{name}", {k: m for k, m in meta.items() if k != "choices"})
            return out
        if origin in (typing.Union, types.UnionType):
            inner = [a for a in typing.get_args(hint) if a is not type(None)]
            return self.convert(inner[0], value, key, meta)
        return self._scalar(hint, value, key, meta)

    def _scalar(self, hint: Any, value: Any, key: str, meta: Any) -> Any:
        if meta.get("unit") == "duration":
            try:
                result: Any = parse_duration(value)  # it refuses a boolean itself
            except (ValueError, TypeError) as exc:
                raise self.fail(key, value, str(exc)) from None
        elif hint is bool:
            if not isinstance(value, bool):
                raise self.fail(key, value, f"expected true or false, got {_type_name(value)}")
            result = value
        elif hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(key, value, f"expected an integer, got {_type_name(value)}")
            result = value
        elif hint is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.fail(key, value, f"expected a number, got {_type_name(value)}")
            result = float(value)
        elif hint is str:
            if not isinstance(value, str):
                raise self.fail(key, value, f"expected a string, got {_type_name(value)}")
            result = value
        else:  # pragma: no cover - a section declared a type this reader does not know
            raise TypeError(f"config field {key} has unsupported type {hint!r}")
        self._check_bounds(result, value, key, meta)
        return result

    def _check_bounds(self, result: Any, value: Any, key: str, meta: Any) -> None:
        choices = meta.get("choices")
        if choices is not None and result not in choices:
            close = suggest(str(result), [str(c) for c in choices])
            hint = f"; did you mean '{close}'?" if close else ""
            shown = ", ".join(str(c) for c in choices)
            raise self.fail(key, value, f"must be one of: {shown}{hint}")
        low, high, above = meta.get("min"), meta.get("max"), meta.get("min_exclusive")
        if isinstance(result, (int, float)) and not isinstance(result, bool):
            if above is not None and not result > above:
                raise self.fail(key, value, f"must be greater than {above:g}" if above else "must be greater than zero")
            if low is not None and result < low:
                bound = f"from {low:g} to {high:g}" if high is not None else f"{low:g} or more"
                raise self.fail(key, value, f"must be {bound}")
            if high is not None and result > high:
                bound = f"from {low:g} to {high:g}" if low is not None else f"{high:g} or less"
                raise self.fail(key, value, f"must be {bound}")


def to_plain(value: Any) -> Any:
    """A dataclass tree as JSON-ready dicts and lists (durations stay seconds)."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value
