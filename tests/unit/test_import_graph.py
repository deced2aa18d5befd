"""The builder's modules import one another in one direction: no circle, however indirect, and
imports inside functions count (an import at call time is still a dependency, only hidden)."""

from __future__ import annotations

import ast
from pathlib import Path

import mlbuild

ROOT = Path(mlbuild.__file__).resolve().parent


def _module_name(path: Path, root: Path) -> str:
    name = ".".join(("mlbuild", *path.relative_to(root).with_suffix("").parts))
    return name.removesuffix(".__init__")


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the mlbuild modules it imports (relative imports resolved, anywhere in the file)."""
    raw: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: -(node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # `from . import x`: x may be a submodule (owner() decides)
                    deps.update(f"{target}.{a.name}" for a in node.names)
                else:
                    deps.add(target)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mlbuild"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("mlbuild."))
        raw[module] = deps
    known = set(raw)

    def owner(name: str) -> str:
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in known else ""

    return {m: {owner(d) for d in deps if owner(d) and owner(d) != m} for m, deps in raw.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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
    return found


def test_the_builder_imports_have_no_cycle():
    graph = import_graph()
    assert "mlbuild._spec" in graph and "mlbuild._api" in graph  # the walk found the package
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    # The check above must be able to fail: a circle through three modules, and one of two.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_a_call_time_import_counts(tmp_path):
    pkg = tmp_path / "mlbuild"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "_a.py").write_text("from ._b import x\n")
    (pkg / "_b.py").write_text("def f():\n    from ._a import y\n")
    assert import_graph(pkg)["mlbuild._b"] == {"mlbuild._a"}
    assert cycles(import_graph(pkg)) == [["mlbuild._a", "mlbuild._b"]]


def test_nothing_outside_oci_imports_a_private_name_from_it():
    # _oci is a library (format, registry client, bases) with a public surface; the backends and
    # the rest of the builder use that surface only.
    leaks = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.relative_to(ROOT).parts[0] == "_oci":
            continue
        module = _module_name(path, ROOT)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.level and node.module):
                continue
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join([*base, node.module])
            if target.startswith("mlbuild._oci"):
                leaks += [f"{module}: {target}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert leaks == []


def test_no_builder_module_is_over_450_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in ROOT.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 450} == {}
