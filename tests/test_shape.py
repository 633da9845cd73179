"""The shape of the code (issue 8): no import loop among distren's modules, counting imports
inside functions and under ``if TYPE_CHECKING:`` too, and no module over 400 lines unless its
docstring says why (with the words "over 400 lines").

Also the rooms' rule: the rooms get what they need passed in, so only the composition root's
users (the api package, the cli) import ``service``; and the lifecycle's: only it moves frames
and jobs."""

from __future__ import annotations

import ast
from pathlib import Path

import distren

ROOT = Path(distren.__file__).parent
MAX_LINES = 400
MARKER = "over 400 lines"


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The distren modules ``name`` imports, anywhere in its text."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for a in node.names:  # `from . import x` imports the module x when there is one
                sub = f"{source}.{a.name}"
                found.add(sub if sub in known else source)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(g, WHITE)
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        colour[n] = GREY
        stack.append(n)
        for m in sorted(g[n]):
            if colour[m] == GREY:
                return stack[stack.index(m):] + [m]
            if colour[m] == WHITE and (c := visit(m)):
                return c
        stack.pop()
        colour[n] = BLACK
        return None

    for n in sorted(g):
        if colour[n] == WHITE and (c := visit(n)):
            return c
    return None


def test_the_graph_sees_imports_of_every_kind():
    g = graph()
    assert "distren.store" in g["distren.lifecycle"]  # from .store import ...
    assert "distren.backends.povray" in g["distren.backends.stitch"]  # from .povray import ...
    assert "distren.service" in g["distren.cli.serving"]  # inside a function
    assert "distren.names" in g["distren.backends.povray"]  # from .. import names


def test_find_cycle_finds_one_under_type_checking(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n")
    b = tmp_path / "b.py"
    b.write_text("from . import a\n")
    known = {"p.a", "p.b"}
    g = {"p.a": imports("p.a", a, known), "p.b": imports("p.b", b, known)}
    assert find_cycle(g) == ["p.a", "p.b", "p.a"]


def test_no_import_loop():
    assert find_cycle(graph()) is None


def test_only_api_and_cli_import_the_composition_root():
    users = sorted(name for name, deps in graph().items() if "distren.service" in deps)
    assert users and all(u.split(".")[1] in ("api", "cli") for u in users), users


def test_no_module_over_400_lines_without_a_reason():
    long = []
    for name, path in modules().items():
        lines = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES and MARKER not in " ".join(doc.split()):
            long.append(f"{name}: {lines} lines")
    assert long == []


def store_moves() -> set[str]:
    """The store's functions that run inside a transaction lifecycle opened (they take ``db``)."""
    out = set()
    for name, path in modules().items():
        if name.startswith("distren.store"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef) and [a.arg for a in node.args.args[:2]] == ["self", "db"]:
                    out.add(node.name)
    return out


def test_every_state_change_is_made_in_lifecycle():
    """Only distren.lifecycle opens the store's write transactions (``store.tx()``) and calls the
    store's functions that run in one, which are every write of a frame's or a job's row."""
    moves = store_moves()
    assert {"set_frame", "set_job", "insert_job", "set_lease"} <= moves
    # steering.py is part of Lifecycle (a mixin, in a file of its own). A name lifecycle's own
    # API shares (extend_leases, set_priority) is a call to lifecycle, not a move.
    lifecycle = {"distren.lifecycle", "distren.steering"}
    moves -= {n.name for m in lifecycle for n in ast.walk(ast.parse(modules()[m].read_text()))
              if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}
    calls = sorted(f"{name}: {node.func.attr}" for name, path in modules().items()
                   if name not in lifecycle and not name.startswith("distren.store")
                   for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                   and (node.func.attr in moves or node.func.attr == "tx"))
    assert calls == []
