"""The package layering the README states: a module imports only from layers below its own."""

from __future__ import annotations

import ast
from pathlib import Path

import sollol_serve

# Lowest first. A package may import packages of lower layers only (not its peers).
LAYERS = [
    # leaves: messages, names, helpers (the package root re-exports the client's names
    # lazily, by name, so that importing it loads nothing above)
    {"__init__", "protocol", "names", "loops", "processes", "priority_helpers"},
    {"config"},  # settings
    {"cluster", "cache", "sim", "observability", "exposure"},  # shared state actors, the node simulator, the audit
    {"analysis", "nodes"},  # request profiles; talking to nodes
    {"shard"},  # shard groups run as nodes
    {"routing"},  # deciding, carrying requests to nodes
    {"batch"},  # jobs through the routing
    {"api"},  # the HTTP surfaces
    {"app", "client"},  # the Serve application; the Python client
    {"pool", "dashboard_client"},  # the original SOLLOL's Python API over the client
    {"sync_wrapper"},  # ... and without async
    {"local"},  # a local Ray running the app
    {"demo", "cli"},  # what users start
]
ROOT = Path(sollol_serve.__file__).parent


def layer_of(package: str) -> int:
    return next(i for i, members in enumerate(LAYERS) if package in members)


def imported_packages(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sollol_serve":
            parts = node.module.split(".")
            out |= {parts[1]} if len(parts) > 1 else {"__init__" if a.name == "__version__" else a.name
                                                       for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("sollol_serve.")}
    return out


def package_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return parts[0]


def test_every_package_has_a_layer():
    packages = {package_of(p) for p in ROOT.rglob("*.py")}
    assert packages <= set().union(*LAYERS), packages - set().union(*LAYERS)


def test_no_module_imports_its_own_layer_or_above():
    wrong = []
    for path in ROOT.rglob("*.py"):
        own = package_of(path)
        for target in imported_packages(path) - {own}:
            if layer_of(target) >= layer_of(own):
                wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, wrong
