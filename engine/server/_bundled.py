"""Find the tritonserver that ships inside the nvidia-pytriton wheel and make it runnable.

The wheel has the server binary, the python backend and one backend stub per Python version,
but no backend directory the server can use as is (the stub is not beside the backend library).
A backend directory of the run's own, holding three symlinks, fixes that without touching
site-packages; the binary's `$ORIGIN` RPATH still resolves its libraries through the symlinks.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
STUB_NAME = "triton_python_backend_stub"


class ServerSetupError(RuntimeError):
    """The server cannot be started or reached; the message says why and what to do."""


@dataclass(frozen=True)
class BundledTriton:
    binary: Path
    python_backend_dir: Path  # holds libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # the stub built for the running Python version
    cache_dir: Path


def locate_bundled() -> BundledTriton:
    """The bundled server's files, or a ServerSetupError that says how to get them."""
    try:
        import pytriton  # only to locate the wheel's files
    except ImportError as exc:
        raise ServerSetupError(
            "the bundled tritonserver needs the nvidia-pytriton package: "
            "pip install 'triton-endurance[server]' (or set [server] binary or url)"
        ) from exc
    root = Path(pytriton.__file__).parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = BundledTriton(
        binary=root / "bin" / "tritonserver",
        python_backend_dir=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / STUB_NAME,
        cache_dir=root / "caches",
    )
    for path in (found.binary, found.stub, *(found.python_backend_dir / n for n in PYTHON_BACKEND_FILES)):
        if not path.exists():
            raise ServerSetupError(f"nvidia-pytriton is installed but {path} is missing (Python {version} supported?)")
    return found


def make_backend_dir(bundled: BundledTriton, where: Path) -> Path:
    """Create `where/python/` with the backend, its utils and the stub for this Python; return `where`."""
    python_dir = where / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in (*(bundled.python_backend_dir / n for n in PYTHON_BACKEND_FILES), bundled.stub):
        link = python_dir / source.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source)
    return where


def stub_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment under which the python backend stub runs this interpreter's Python and packages.

    The stub embeds libpython and finds its prefix by looking up `python3` on PATH, so this
    interpreter's bin directory goes first (unresolved: a venv's python is a symlink). The stub's
    libpython must be this Python's, so LIBDIR goes first on LD_LIBRARY_PATH when it has one.
    """
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join(p for p in (os.path.dirname(sys.executable), env.get("PATH", "/usr/bin:/bin")) if p)
    libdir = sysconfig.get_config_var("LIBDIR")
    libpython = f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    if libdir and Path(libdir, libpython).exists():
        current = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = libdir + (os.pathsep + current if current else "")
    return env
