"""perf_analyzer 2.51, installed beside the engine where this host allows it.

perf_analyzer is the C++ binary inside the `tritonclient[all]==2.51.0` wheel (TRITON_ON_CPU.md,
"perf_analyzer on this machine"). It lives in a venv of its own (`.venv-pa` at the repository root)
so that it never pins the engine's tritonclient. It needs two shared libraries the wheel does not
bring: `libcudart.so.12` (the `nvidia-cuda-runtime-cu12` wheel, installed into the same venv and put
on LD_LIBRARY_PATH) and `libb64.so.0d` (Debian's `libb64-0d`: `make perf-analyzer` installs it
where it can, as root with apt). It runs on a CPU-only host.

`find_perf_analyzer()` builds the venv on first use (about 30 s, 260 MB) and returns how to run the
binary, or raises `PerfAnalyzerUnavailable` saying what is missing, so that a benchmark can report
the rows it skips and why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

from common import ROOT  # isort: skip

VENV = ROOT / ".venv-pa"
PACKAGES = ("tritonclient[all]==2.51.0", "nvidia-cuda-runtime-cu12")
INSTALL_TIMEOUT_S = 900.0


class PerfAnalyzerUnavailable(RuntimeError):
    """perf_analyzer cannot run on this host; the message says what is missing."""


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    env: dict[str, str]  # the environment to run it in (LD_LIBRARY_PATH with libcudart)

    def command(self, *args: str) -> list[str]:
        return [str(self.binary), *args]


def _venv_python(root: Path) -> Path:
    return root / "bin" / "python"


def _install(root: Path) -> None:
    if not _venv_python(root).exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(root)
    done = subprocess.run([str(_venv_python(root)), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           *PACKAGES], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise PerfAnalyzerUnavailable(f"pip could not install {' '.join(PACKAGES)} into {root}: " + " / ".join(tail))


def _cudart_dir(root: Path) -> Path:
    found = sorted(root.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    if not found:
        raise PerfAnalyzerUnavailable(f"nvidia-cuda-runtime-cu12 is not in {root}: libcudart.so.12 is missing")
    return found[0]


def _missing_libraries(binary: Path, env: dict[str, str]) -> list[str]:
    done = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env, timeout=30)
    return [line.split("=>")[0].strip() for line in done.stdout.splitlines() if "not found" in line]


def find_perf_analyzer(root: Path = VENV, install: bool = True) -> PerfAnalyzer:
    """perf_analyzer ready to run (installing its venv first when `install` and it is absent)."""
    if not sys.platform.startswith("linux"):
        raise PerfAnalyzerUnavailable("the perf_analyzer of the tritonclient wheel is a Linux binary")
    binary = root / "bin" / "perf_analyzer"
    if not binary.exists():
        if not install:
            raise PerfAnalyzerUnavailable(f"{binary} is not installed")
        _install(root)
        if not binary.exists():
            raise PerfAnalyzerUnavailable(f"the tritonclient 2.51.0 wheel installed no {binary}")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, (str(_cudart_dir(root)), env.get("LD_LIBRARY_PATH"))))
    missing = _missing_libraries(binary, env)
    if missing:
        hint = " (Debian: apt-get install libb64-0d; `make perf-analyzer` does it as root)" \
            if any("libb64" in name for name in missing) else ""
        raise PerfAnalyzerUnavailable(f"perf_analyzer needs {', '.join(missing)}, not found on this host{hint}")
    return PerfAnalyzer(binary, env)


if __name__ == "__main__":
    try:
        found = find_perf_analyzer()
    except PerfAnalyzerUnavailable as exc:
        print(f"perf_analyzer unavailable: {exc}")
        sys.exit(1)
    print(f"perf_analyzer: {found.binary}")
