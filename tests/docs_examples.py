"""The python examples of a markdown page: what tests/test_library_docs.py runs and what
tests/test_pytest_plugin.py runs as a pytest file."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY_DOC = ROOT / "docs" / "library.md"
README = ROOT / "README.md"
_FENCE = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)
_PYTEST_FILE = re.compile(r"^# (test_\w+\.py)\n")


@dataclass(frozen=True)
class Example:
    code: str
    pytest_file: str  # "test_x.py" when the block is a pytest file (its first line says so), else ""


def python_examples(text: str) -> list[Example]:
    out = []
    for match in _FENCE.finditer(text):
        code = match.group(1)
        named = _PYTEST_FILE.match(code)
        out.append(Example(code, named.group(1) if named else ""))
    return out


def section(text: str, title: str) -> str:
    """The markdown of the `## title` section, up to the next `## ` heading."""
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def pytest_file_example(path: Path = LIBRARY_DOC) -> Example:
    found = [e for e in python_examples(path.read_text()) if e.pytest_file]
    if len(found) != 1:
        raise AssertionError(f"{path}: expected one pytest file example, found {len(found)}")
    return found[0]
