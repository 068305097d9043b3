"""The package's import graph keeps its layers: kernels never import the tools above them,
dispatch never imports the kernels, and no two modules import each other (directly or round a
longer circle).

The graph is read from the source with ``ast``, not by importing: every ``import`` statement
counts, at module level or inside a function (an import inside a function still ties the two
modules together; it only postpones the failure). ``import a.b.c`` is an edge to ``a.b.c``;
``from a.b import c`` is an edge to the module ``a.b.c`` when there is one, else to ``a.b``;
relative imports are resolved against the importing module's package. Imports of names held
in strings (``importlib.import_module("millkernels.ops.quant")``, how a package loads its
submodules lazily) are not edges.
"""

from __future__ import annotations

import ast
import itertools
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "millkernels"

#: (importer prefix, imported prefix, why): a module under the first may not import one under
#: the second.
FORBIDDEN = (
    ("millkernels.ops", "millkernels.bench", "kernels do not import the benchmark tools"),
    ("millkernels.ops", "millkernels.analyze", "kernels declare ANALYSIS as data instead"),
    ("millkernels.dispatch", "millkernels.ops", "dispatch sits below the op families"),
)


@dataclass(frozen=True)
class Site:
    """Where an import statement is: file (relative to src/) and line."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


Graph = dict[str, dict[str, list[Site]]]  # importer -> imported -> the statements


def module_files(src: Path, root: str = ROOT) -> dict[str, Path]:
    """Every module of the package under ``src``: dotted name -> file."""
    out = {}
    for path in sorted((src / root).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` written in ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The package module that importing ``name`` names: itself, or its closest parent."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path], src: Path) -> dict[str, int]:
    """The package modules ``module`` imports (anywhere in the file) -> first line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: dict[str, int] = {}

    def add(name: str, line: int) -> None:
        target = _target(name, modules)
        if target is not None and target != module:
            found.setdefault(target, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in modules else base, node.lineno)
    return found


def import_graph(src: Path = SRC, root: str = ROOT) -> Graph:
    """Importer -> imported -> the import statements, over every module of the package."""
    modules = module_files(src, root)
    graph: Graph = {m: {} for m in modules}
    for module, path in modules.items():
        rel = str(path.relative_to(src))
        for target, line in imports_of(module, path, modules, src).items():
            graph[module].setdefault(target, []).append(Site(rel, line))
    return graph


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def forbidden_edges(graph: Graph) -> list[str]:
    """One line per import that crosses a layer the wrong way."""
    out = []
    for importer, targets in sorted(graph.items()):
        for imported, sites in sorted(targets.items()):
            for src_prefix, dst_prefix, why in FORBIDDEN:
                if _under(importer, src_prefix) and _under(imported, dst_prefix):
                    out.append(f"{importer} -> {imported} ({sites[0]}): {why}")
    return out


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return out


def _shortest_path(graph: dict[str, set[str]], start: str, goal: str, within: set[str]):
    """The shortest module path ``start`` -> ... -> ``goal`` inside ``within``."""
    previous: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = []
            step: str | None = node
            while step is not None:
                path.append(step)
                step = previous[step]
            return path[::-1]
        for nxt in sorted(graph[node] & within):
            if nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    return None


def cycles(graph: Graph) -> list[str]:
    """Every import circle, one readable line each: ``a (a.py:3) -> b (b.py:7) -> a``.

    For every import inside a strongly connected component, the shortest circle through it;
    circles found twice (the same modules in turn) are listed once, so every import that
    keeps a circle closed appears in some line.
    """
    edges = {a: set(targets) for a, targets in graph.items()}
    seen = set()
    out = []
    for component in strongly_connected(edges):
        members = set(component)
        for a in component:
            for b in sorted(edges[a] & members):
                back = _shortest_path(edges, b, a, members)
                circle = [a, *back]  # a -> b -> ... -> a
                ring = circle[:-1]
                turn = ring.index(min(ring))
                key = tuple(ring[turn:] + ring[:turn])
                if key in seen:
                    continue
                seen.add(key)
                steps = [f"{x} ({graph[x][y][0]})" for x, y in itertools.pairwise(circle)]
                out.append(" -> ".join([*steps, circle[-1]]))
    return out


# ---------------------------------------------------------------------------- the package


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph()


def test_no_import_crosses_a_layer_the_wrong_way(graph):
    bad = forbidden_edges(graph)
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, f"{len(found)} import circle(s):\n" + "\n".join(found)


def _package(tmp_path: Path, files: dict[str, str]) -> Graph:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(tmp_path, "millkernels")


def test_planted_violations_are_all_listed(tmp_path):
    graph = _package(
        tmp_path,
        {
            "millkernels/__init__.py": "",
            "millkernels/dispatch.py": "def f():\n    from millkernels.ops import quant\n",
            "millkernels/analyze/__init__.py": "",
            "millkernels/bench/__init__.py": "",
            "millkernels/bench/rows.py": "",
            "millkernels/ops/__init__.py": "",
            "millkernels/ops/quant/__init__.py": "from . import kern\n",
            "millkernels/ops/quant/kern.py": (
                "import millkernels.analyze\nfrom ...bench import rows\n"
            ),
        },
    )
    bad = forbidden_edges(graph)
    assert bad == [
        "millkernels.dispatch -> millkernels.ops.quant (millkernels/dispatch.py:2): "
        "dispatch sits below the op families",
        "millkernels.ops.quant.kern -> millkernels.analyze (millkernels/ops/quant/kern.py:1): "
        "kernels declare ANALYSIS as data instead",
        "millkernels.ops.quant.kern -> millkernels.bench.rows "
        "(millkernels/ops/quant/kern.py:2): kernels do not import the benchmark tools",
    ]


def test_planted_cycles_are_listed_as_paths(tmp_path):
    graph = _package(
        tmp_path,
        {
            "millkernels/__init__.py": "",
            "millkernels/a.py": "from millkernels import b\n",
            "millkernels/b.py": "def f():\n    from . import c\n",
            "millkernels/c.py": "import millkernels.a\nimport millkernels.b\n",
            "millkernels/lazy/__init__.py": (
                "import importlib\n\ndef __getattr__(n):\n"
                "    return importlib.import_module(f'{__name__}.{n}')\n"
            ),
            "millkernels/lazy/sub.py": "from millkernels.lazy import x\n",  # a name, not a module
        },
    )
    assert cycles(graph) == [
        "millkernels.a (millkernels/a.py:1) -> millkernels.b (millkernels/b.py:2) "
        "-> millkernels.c (millkernels/c.py:1) -> millkernels.a",
        "millkernels.b (millkernels/b.py:2) -> millkernels.c (millkernels/c.py:2) -> millkernels.b",
    ]
