"""The module graph of ``packages/*/src``: no import cycles, and the distributions depend one way only.

Edges are read from the source with ``ast``: every ``import`` / ``from ... import`` at any depth, so a lazy
import inside a function (the usual way to hide a cycle) counts; imports under ``if TYPE_CHECKING:`` do not,
they never run. ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``.
A package's ``__init__`` re-exporting its submodules is the normal shape of a package, so importing
``a.b.c`` is an edge to ``a.b.c`` only, not to ``a`` and ``a.b`` as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: distribution -> the module prefixes it ships
DISTRIBUTIONS = {
    "vortex-ops": ("vortex_torch.abs", "vortex_torch.indexer", "vortex_torch.cache", "vortex_torch.kernels"),
    "vortex-flow": ("vortex_torch.flow",),
    "vortex-sglang": ("vortex_torch.engine",),
}


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every module under packages/*/src."""
    out: dict[str, tuple[Path, bool]] = {}
    for src in sorted(ROOT.glob("packages/*/src")):
        for path in sorted(src.rglob("*.py")):
            parts = list(path.relative_to(src).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, is_pkg: bool, known: dict[str, tuple[Path, bool]]) -> set[str]:
    """The modules of ``known`` that ``name`` imports when it runs (any depth, TYPE_CHECKING blocks excluded)."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:
                    visit_stmt(stmt)
                continue
            visit_stmt(child)

    def visit_stmt(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                if sub in known:
                    out.add(sub)
                elif mod in known:
                    out.add(mod)
        visit(node)

    visit(ast.parse(path.read_text(), str(path)))
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, is_pkg, known) for name, (path, is_pkg) in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_graph_is_read() -> None:
    """What the tests below rely on: the known edges are seen, lazy ones included."""
    graph = import_graph()
    assert "vortex_torch.abs.context" in graph["vortex_torch.abs.op"]
    assert "vortex_torch.flow.compiler.reference" in graph["vortex_torch.engine.sgl.decode_core"]  # lazy
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_distributions_depend_one_way() -> None:
    """vortex-ops imports neither the compiler nor the engine; vortex-flow does not import the engine."""
    graph = import_graph()
    below = {"vortex-ops": ("vortex-flow", "vortex-sglang"), "vortex-flow": ("vortex-sglang",)}
    bad = []
    for dist, forbidden in below.items():
        for mod, deps in graph.items():
            if not mod.startswith(DISTRIBUTIONS[dist]):
                continue
            bad += [
                f"{mod} -> {d}" for d in sorted(deps) for f in forbidden if d.startswith(DISTRIBUTIONS[f])
            ]
    assert bad == []
