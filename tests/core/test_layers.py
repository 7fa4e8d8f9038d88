"""The core's layout: domain packages in layers, and no import circle, counting imports inside functions.

import-linter checks the layers contract too (test_import_hygiene); this check needs nothing installed and
also finds circles *inside* a package, which a layers contract does not see.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "llamaforge_tui" / "core"
LAYERS = [("gguf",), ("ollama", "hub"), ("data",), ("model",), ("train",), ("export",), ("infer",)]
RANK = {pkg: i for i, group in enumerate(LAYERS) for pkg in group}
SHARED = {"errors", "fsutil", "settings", "system", "gpu_samplers"}


def import_graph(core: Path = CORE) -> dict[str, set[str]]:
    """Every core module -> the llamaforge_tui modules it imports, at any depth of the file (functions too)."""
    top = core.parent.parent

    def module_name(path: Path) -> str:
        parts = list(path.relative_to(top).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    def exists(module: str) -> bool:
        base = top.joinpath(*module.split("."))
        return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()

    graph: dict[str, set[str]] = {}
    for path in sorted(core.rglob("*.py")):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("llamaforge_tui"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if exists(full) else node.module)
            elif isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{path}: relative import; core uses absolute imports")
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("llamaforge_tui"))
        graph[module_name(path)] = deps
    return graph


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) >= 3 and parts[:2] == ["llamaforge_tui", "core"] else None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
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
                        found.append(sorted(component))
    return found


def test_core_is_domain_packages_and_few_shared_modules() -> None:
    loose = sorted(p.stem for p in CORE.glob("*.py") if p.stem != "__init__")
    packages = sorted(p.name for p in CORE.iterdir() if (p / "__init__.py").is_file())
    assert set(loose) <= SHARED and len(loose) <= 5, loose
    assert set(packages) == set(RANK) and len(packages) >= 6, packages
    for pkg in packages:
        doc = ast.get_docstring(ast.parse((CORE / pkg / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "import" in doc, f"core/{pkg}/__init__.py must say what it owns and may import"


def test_no_package_imports_a_higher_layer_even_lazily() -> None:
    wrong = [f"{m} -> {d}" for m, deps in import_graph().items() for d in sorted(deps)
             if (a := _package(m)) in RANK and (b := _package(d)) in RANK and a != b and RANK[b] >= RANK[a]]
    assert wrong == []


def test_shared_modules_import_no_domain_package() -> None:
    graph = import_graph()
    wrong = [f"{m} -> {d}" for m, deps in graph.items() if m.split(".")[-1] in SHARED and _package(m) in SHARED
             for d in deps if _package(d) in RANK]
    assert wrong == []


def test_no_import_circle_between_core_modules() -> None:
    assert cycles(import_graph()) == []


def test_the_circle_check_finds_a_hidden_circle(tmp_path: Path) -> None:
    """The check itself: a circle closed by an import inside a function is still a circle."""
    pkg = tmp_path / "llamaforge_tui" / "core" / "demo"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from llamaforge_tui.core.demo.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from llamaforge_tui.core.demo import a\n    return a\n")
    found = cycles(import_graph(tmp_path / "llamaforge_tui" / "core"))
    assert found == [["llamaforge_tui.core.demo.a", "llamaforge_tui.core.demo.b"]]


@pytest.mark.parametrize("module", ["llamaforge_tui.core.ollama.store", "llamaforge_tui.core.hub.cache",
                                    "llamaforge_tui.core.ollama.template"])
def test_lower_layers_know_nothing_of_the_upper_ones(module: str) -> None:
    """The three places the old circles ran through."""
    deps = import_graph()[module]
    assert not any(_package(d) in ("data", "model", "train", "export", "infer") for d in deps), deps
