"""The import graph of the product code: no circles, no arrows pointing up.

Every module of engine/, workers/, shm/ and model_repo_gen/ is parsed (never imported), so the
test sees imports inside functions too (the lazy ones that keep Ray, tritonclient or the report
out of a process that does not need them): a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "workers", "shm", "model_repo_gen")
# The libraries beside the engine: usable on their own, so they never reach into it.
LIBRARIES = ("workers", "shm", "model_repo_gen")

# engine's subpackages and top-level modules, low to high. A unit imports units of lower layers and
# of its own layer (where that makes no circle: checked apart), never one of a higher layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    # Import nothing of the engine: the config, the names of the monitor's series, the values that
    # cross process lines (a closed window, the aggregator's live figures), and what talks to the
    # outside alone (the server process, the kernel's log of OOM kills).
    ("config", "series_names", "window_stats", "live_status", "server", "oom"),
    # Pure functions over series and windows, returning verdicts.
    ("detectors",),
    # The run's store (windows, series, verdicts); the monitor, which samples the server.
    ("store", "monitor"),
    # What a run places on a host: the large-request budget (from the monitor's memory reading),
    # the workers and monitors (this host or a Ray cluster) and the telemetry's CURVE keys.
    ("memory_budget", "cluster"),
    # Folds the records, runs the detectors, writes the store (it guards telemetry with the keys).
    ("aggregator",),
    # Reads a run back from its store alone.
    ("report",),
    # Around a run: its live view, its directory and server, the probe of every model; the perf
    # sweep, a run of its own kind.
    ("live_view", "run_setup", "probe", "perf"),
    # The run itself and what starts it: the runner's parts, the coordinator, the library API, the
    # command line, the pytest plugin, the package's public names and `python -m engine`.
    ("runner", "coordinator", "library", "cli", "pytest_plugin", "__init__", "__main__"),
)


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the product packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imported(module: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The product modules `module` imports, anywhere in its body: `from a import b` names a.b
    when b is a module, else a; a relative import is resolved against the module's package. A
    product module that does not exist is named as it is written (the caller reports it)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES and name != module:
                yield name


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {module: set(_imported(module, path, known)) for module, path in known.items()}


def _unit(module: str) -> str | None:
    """engine's subpackage or top-level module that `module` belongs to; None outside engine."""
    parts = module.split(".")
    if parts[0] != "engine":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_every_imported_product_module_exists() -> None:
    known = _modules()
    missing = sorted(f"{module} -> {target}" for module, targets in _graph().items()
                     for target in targets if target not in known)
    assert not missing, "imports of modules that do not exist:\n" + "\n".join(missing)


def test_the_libraries_never_import_the_engine() -> None:
    upward = sorted(f"{module} -> {target}" for module, targets in _graph().items()
                    if module.split(".")[0] in LIBRARIES for target in targets if target.split(".")[0] == "engine")
    assert not upward, "the libraries import the engine:\n" + "\n".join(upward)


def _circles(cycles: list[list[str]]) -> str:
    return "import circles, each among:\n" + "\n".join(", ".join(cycle) for cycle in cycles)


def test_no_module_is_part_of_an_import_circle() -> None:
    cycles = _cycles(_graph())
    assert not cycles, _circles(cycles)


def test_no_subpackage_of_the_engine_is_part_of_an_import_circle() -> None:
    units: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        unit = _unit(module)
        if unit is not None:
            units.setdefault(unit, set()).update(t for t in map(_unit, targets) if t is not None and t != unit)
    cycles = _cycles(units)
    assert not cycles, _circles(cycles)


def test_every_unit_of_the_engine_has_a_layer() -> None:
    declared = [unit for layer in LAYERS for unit in layer]
    assert len(declared) == len(set(declared)), "a unit in two layers"
    found = {_unit(module) for module in _graph()} - {None}
    assert not found - set(declared), f"place these in LAYERS: {sorted(found - set(declared))}"


def test_no_unit_of_the_engine_imports_a_higher_layer() -> None:
    rank = {unit: level for level, layer in enumerate(LAYERS) for unit in layer}
    upward = []
    for module, targets in sorted(_graph().items()):
        unit = _unit(module)
        for target in sorted(targets):
            other = _unit(target)
            if unit in rank and other in rank and rank[other] > rank[unit]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)
