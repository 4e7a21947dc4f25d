"""docs/library.md's examples run as written, in order, as one script against the bundled server
(the pytest file among them runs in tests/test_pytest_plugin.py); README's "Library use" shows the
same code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs_examples import LIBRARY_DOC, README, python_examples, section

RUN_TIMEOUT_S = 420


def test_readme_library_use_shows_the_docs_examples() -> None:
    readme = python_examples(section(README.read_text(), "Library use"))
    docs = [e.code for e in python_examples(LIBRARY_DOC.read_text())]
    assert any(e.pytest_file for e in readme) and any(not e.pytest_file for e in readme)
    for example in readme:
        assert example.code in docs, f"README's example is not docs/library.md's:\n{example.code}"


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_library_doc_examples_run(tmp_path: Path) -> None:
    scripts = [e.code for e in python_examples(LIBRARY_DOC.read_text()) if not e.pytest_file]
    assert len(scripts) >= 3
    script = tmp_path / "examples.py"
    script.write_text("\n\n".join(scripts))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert "PASS exit 0" in done.stdout
    assert sum(line.startswith("True ") for line in done.stdout.splitlines()) == 2  # both loads passed
    assert "workers.shm = \"shared\": must be one of" in done.stdout  # the ConfigError example said its line
    assert len(list((tmp_path / "results").iterdir())) == 1  # one run, its directory where the config says
