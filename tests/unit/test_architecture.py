"""The package's shape: its modules import each other without a cycle.

The graph counts every import of a ``certbot_fanout`` module, at module level or inside a
function: a lazy import still ties two modules together, and a cycle through one is still a
module that cannot be understood, or tested, without the other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "certbot_fanout"


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def imported(path: Path, name: str, known: Mapping[str, Path]) -> Iterator[str]:
    """Every package module ``path`` (module ``name``) imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` takes the submodule when there is one; any other name comes
            # from the module (or package __init__) named.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    known = modules(package)
    # A package __init__ that gathers its submodules (a registry) is not a cycle: only what a
    # module names counts, not that Python runs the package __init__ first.
    return {name: set(imported(path, name, known)) for name, path in known.items()}


def cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle() -> None:
    edges = graph()
    assert len(edges) > 15, sorted(edges)  # the walk found the package
    assert cycles(edges) == []


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"a.py": "from pkg import b\n", "b.py": "x = 1\n"}, []),
        (
            {"a.py": "from pkg import b\n", "b.py": "def f():\n    from pkg.a import x\n"},
            [["pkg.a", "pkg.b"]],
        ),
        (
            {"a.py": "from . import b\n", "b.py": "import pkg.c\n", "c.py": "from .a import y\n"},
            [["pkg.a", "pkg.b", "pkg.c"]],
        ),
        (
            {
                "sub/__init__.py": "from pkg import a\nfrom pkg.sub import m\n",
                "sub/m.py": "",
                "a.py": "from pkg.sub import helper\n",
            },
            [["pkg.a", "pkg.sub"]],
        ),
        (
            {
                "sub/__init__.py": "from pkg.sub import m\nfrom . import n\n",
                "sub/m.py": "from pkg.sub.n import x\n",
                "sub/n.py": "",
            },
            [],
        ),
    ],
    ids=[
        "no-cycle",
        "lazy-import-cycle",
        "relative-three-cycle",
        "through-a-package-init",
        "a-registry-init-is-no-cycle",
    ],
)
def test_the_cycle_finder_sees_every_kind_of_import(
    tmp_path: Path, files: dict[str, str], expected: list[list[str]]
) -> None:
    package = tmp_path / "pkg"
    for rel, text in files.items():
        (package / rel).parent.mkdir(parents=True, exist_ok=True)
        (package / rel).write_text(text)
    (package / "__init__.py").touch()
    assert cycles(graph(package)) == expected
