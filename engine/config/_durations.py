"""Durations as people write them: "90s", "7h", "6d12h", "1h30m", "250ms", or plain seconds."""

from __future__ import annotations

import re

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|d|h|m|s)")


def parse_duration(value: str | int | float) -> float:
    """Seconds in `value`; ValueError with the accepted forms when it cannot be read."""
    if isinstance(value, bool):
        raise ValueError("expected a duration, got a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip().replace(" ", "")
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    try:
        return sign * float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"cannot read {value!r} as a duration (use e.g. \"90s\", \"7h\", \"6d12h\", \"250ms\")")
    return sign * total


def format_duration(seconds: float) -> str:
    """Shortest exact-enough form: 25000 -> "6h56m40s", 0.25 -> "250ms"."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    out, rest = [], seconds
    for unit in ("d", "h", "m"):
        count, rest = divmod(rest, _UNITS[unit])
        if count:
            out.append(f"{int(count)}{unit}")
    if rest or not out:
        out.append(f"{rest:g}s")
    return "".join(out)
