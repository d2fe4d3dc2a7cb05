"""The import contract of the tree, read from the source (ast), every import counted: those at
module level and those inside functions or `if TYPE_CHECKING:` blocks alike.

- The director and the server are two programs on two hosts: `director/` imports nothing of
  the server but the wire models (`server/models.py`), and the server nothing of the director.
- The wire models are a leaf: `server/models.py` (and the `server` package it sits in) import
  nothing else of the server, so the director does not pull the server in with them.
- Only `site_director/` (the `site-director` command) imports both sides.
- No import circle, at module level or through a function-level import.
- Layers: `server/logic/`, `server/db/` and every module they import (transitively) import no
  FastAPI or Starlette, and nothing of the HTTP layer (`server.http`, `server.routers`,
  `server.app`).
- The database layer's callers see only the project's errors: nothing above `server/db/`
  imports SQLAlchemy's exceptions.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "director", "site_director")
WIRE_MODELS = "server.models"
HTTP_FRAMEWORKS = ("fastapi", "starlette")
HTTP_LAYER = ("server.http", "server.routers", "server.app")


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    #: imported name -> line numbers (the full dotted name as written, resolved if relative)
    imports: dict[str, list[int]] = field(default_factory=dict)


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _imports(module: Module) -> Iterator[tuple[str, int]]:
    tree = ast.parse(module.path.read_text(), str(module.path))
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for node in ast.walk(tree):  # every node: module level, functions, classes, if blocks
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                if node.level > 1:
                    anchor = anchor[: -(node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, node.lineno
            for alias in node.names:  # `from server import cli` imports server.cli
                yield f"{base}.{alias.name}", node.lineno


@cache
def modules() -> dict[str, Module]:
    found: dict[str, Module] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:  # Alembic's scripts, loaded by Alembic
                continue
            name, is_package = _module_name(path)
            found[name] = Module(name, path, is_package)
    for module in found.values():
        for name, line in _imports(module):
            module.imports.setdefault(name, []).append(line)
    return found


def _ours(name: str) -> str | None:
    """The module of this tree that an imported name designates (`server.cli.main` ->
    `server.cli`), or None for a name from elsewhere."""
    known = modules()
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


@cache
def graph() -> dict[str, dict[str, int]]:
    """module -> {module of this tree it imports: first line}."""
    edges: dict[str, dict[str, int]] = {}
    for module in modules().values():
        out: dict[str, int] = {}
        for name, lines in module.imports.items():
            target = _ours(name)
            if target is not None and target != module.name:
                out[target] = min(lines[0], out.get(target, lines[0]))
        edges[module.name] = out
    return edges


def _where(source: str, target: str) -> str:
    path = modules()[source].path.relative_to(ROOT)
    return f"{path}:{graph()[source][target]} imports {target}"


def _in(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_walk_sees_the_tree() -> None:
    """A guard on the test itself: it reads the packages and their function-level imports."""
    found = modules()
    assert {"server.app", "server.models", "director.loop", "site_director.cli"} <= set(found)
    assert "server.app" in graph()["server.cli"]  # imported inside run_server


def test_director_imports_only_the_wire_models_of_the_server() -> None:
    arrows = [
        _where(source, target)
        for source, targets in graph().items()
        if _in(source, "director")
        for target in targets
        if _in(target, "server") and target != WIRE_MODELS
    ]
    assert not arrows, "director -> server beyond the wire models:\n" + "\n".join(arrows)


def test_server_imports_nothing_of_the_director_or_the_command() -> None:
    arrows = [
        _where(source, target)
        for source, targets in graph().items()
        if _in(source, "server")
        for target in targets
        if _in(target, "director", "site_director")
    ]
    assert not arrows, "server -> director or site_director:\n" + "\n".join(arrows)


def test_director_imports_nothing_of_the_command() -> None:
    arrows = [
        _where(source, target)
        for source, targets in graph().items()
        if _in(source, "director")
        for target in targets
        if _in(target, "site_director")
    ]
    assert not arrows, "\n".join(arrows)


@pytest.mark.parametrize("leaf", [WIRE_MODELS, "server"])
def test_the_wire_models_are_a_leaf(leaf: str) -> None:
    """Importing `server.models` runs `server/__init__.py` too: both import nothing of ours."""
    assert graph()[leaf] == {}, [_where(leaf, t) for t in graph()[leaf]]


def _cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), and self-loops."""
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in edges[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles() -> None:
    """None at module level, none closed by an import inside a function."""
    circles = _cycles()
    details = [
        "\n".join(_where(a, b) for a in circle for b in circle if b in graph()[a])
        for circle in circles
    ]
    assert not circles, "import circles:\n\n" + "\n\n".join(details)


def _below_the_routers() -> dict[str, list[str]]:
    """Every module that server/logic/ or server/db/ import, transitively, with one path."""
    edges = graph()
    reached: dict[str, list[str]] = {}
    todo = [[name] for name in edges if _in(name, "server.logic", "server.db")]
    while todo:
        path = todo.pop()
        if path[-1] in reached:
            continue
        reached[path[-1]] = path
        todo += [[*path, succ] for succ in edges[path[-1]] if succ not in reached]
    return reached


def test_no_http_below_the_routers() -> None:
    bad: dict[str, str] = {}
    for name, path in sorted(_below_the_routers().items()):
        module = modules()[name]
        for imported, lines in module.imports.items():
            if imported.split(".")[0] in HTTP_FRAMEWORKS or _in(imported, *HTTP_LAYER):
                where = f"{module.path.relative_to(ROOT)}:{lines[0]}"
                bad.setdefault(where, f"{where} {imported} (via {' -> '.join(path)})")
    assert not bad, "HTTP below the routers:\n" + "\n".join(bad.values())


def test_driver_errors_stay_in_the_database_layer() -> None:
    """SQLAlchemy's exceptions are the database layer's business: it translates them."""
    bad = [
        f"{module.path.relative_to(ROOT)}:{lines[0]} {imported}"
        for module in modules().values()
        if _in(module.name, "server") and not _in(module.name, "server.db")
        for imported, lines in module.imports.items()
        if _in(imported, "sqlalchemy.exc")
    ]
    assert not bad, "\n".join(bad)


def test_the_server_process_stays_light() -> None:
    """What `site-director server` keeps resident (docs/performance.md): neither Alembic (the
    upgrade runs in a forked child) nor the director's commands (httpx, rich, the cycle)."""
    program = (
        "import sys\n"
        "from site_director.cli import build_parser\n"
        "build_parser('server').parse_args(['server'])\n"
        "import server.app, server.cli\n"
        # a None entry blocks an import (director/__init__.py blocks httpx's CLI): not loaded
        "print(' '.join(m for m, module in sys.modules.items() if module is not None))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    heavy = [m for m in loaded if m.split(".")[0] in {"alembic", "mako", "httpx", "rich"}]
    assert not heavy, heavy
    assert not [m for m in loaded if _in(m, "director.commands")]


def test_one_log_format() -> None:
    """site_director/cli.py writes the director's log format out rather than import it."""
    from director.commands.common import KEYVALUE_FORMAT
    from site_director import cli

    assert cli.KEYVALUE_FORMAT == KEYVALUE_FORMAT
