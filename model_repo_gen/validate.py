"""Check a RepoOptions against the bounds its fields declare in `metadata`, so that a value a
server would refuse (count: 0, a negative idle timeout) is caught before anything is written.

The engine's config reader applies the same metadata when it reads a TOML file; this check is
for callers that build RepoOptions themselves (the CLI, library users)."""

from __future__ import annotations

import dataclasses
from typing import Any


def _problem(value: Any, meta: Any) -> str | None:
    if "choices" in meta:
        items = value if isinstance(value, tuple) else (value,)
        bad = [v for v in items if v not in meta["choices"]]
        if bad:
            return f"{bad[0]!r} is not one of {', '.join(map(str, meta['choices']))}"
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if "min" in meta and value < meta["min"]:
        return f"must be {meta['min']} or more"
    if "max" in meta and value > meta["max"]:
        return f"must be {meta['max']} or less"
    if "min_exclusive" in meta and value <= meta["min_exclusive"]:
        return f"must be greater than {meta['min_exclusive']}"
    return None


class OptionError(ValueError):
    """An option out of its bounds: `key` is its dotted field name, e.g. ``faults.wrong_every``."""

    def __init__(self, key: str, value: Any, problem: str) -> None:
        super().__init__(f"{key} = {value!r}: {problem}")
        self.key, self.value, self.problem = key, value, problem


def check_options(options: Any, prefix: str = "", skip: tuple[str, ...] = ("models",)) -> None:
    """Raise OptionError (a ValueError) naming the first field (dotted, e.g.
    ``faults.wrong_every``) whose value is outside its metadata bounds. `models` is skipped: an
    unknown name gets its own message, with close matches, from the catalog."""
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_options(value, prefix=f"{key}.", skip=())
            continue
        if f.name in skip:
            continue
        problem = _problem(value, f.metadata)
        if problem:
            raise OptionError(key, value, problem)
