"""Layers point down only: no import cycle between the package's folders, imports inside functions counted (they
are imports all the same, only later), and the storage layer (gemdeploy/run/) imports no stage."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Installed names of the folders (setup.py's package-dir mapping).
ROOTS = {"gemdeploy": REPO / "gemdeploy", "gemdeploy.cli": REPO / "cli", "gemdeploy.exporters": REPO / "exporters",
         "gemdeploy.calibration": REPO / "calibration"}
STAGES = {"mine", "train", "compact", "exporters", "calibration", "bench", "stages", "api", "cli"}


def _modules() -> dict[str, Path]:
    found = {}
    for prefix, folder in ROOTS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


def _folder(module: str) -> str:
    """gemdeploy.<folder or top-level module>..."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "gemdeploy"


def folder_imports() -> dict[tuple[str, str], list[str]]:
    """(folder, imported folder) -> 'module:line' of every import between two folders, wherever it sits."""
    modules = _modules()
    edges: dict[tuple[str, str], list[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                if target in modules and _folder(target) != _folder(name):
                    edges.setdefault((_folder(name), _folder(target)), []).append(f"{name}:{node.lineno}")
    return edges


def _cycles(edges) -> list[list[str]]:
    """Strongly connected components of more than one folder (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_folders():
    edges = folder_imports()
    assert ("mine", "run") in edges and ("bench", "exporters") in edges  # the walk sees real imports
    cycles = _cycles(edges)
    detail = [f"{a} -> {b}: {', '.join(edges[a, b][:3])}" for c in cycles for a in c for b in c if (a, b) in edges]
    assert not cycles, "import cycles between folders:\n" + "\n".join(detail)


def test_storage_and_library_layers_import_no_stage():
    edges = folder_imports()
    for low in ("run", "sparsity", "models", "data", "files", "registry", "options", "user_code", "errors"):
        up = sorted(f"{b} ({', '.join(where[:2])})" for (a, b), where in edges.items() if a == low and b in STAGES)
        assert not up, f"{low} imports a stage: {up}"
    assert not [b for (a, b) in edges if a == "files" and b != "errors"]  # the leaf: errors only


def test_stages_never_call_each_other():
    """mine does not compact and compact does not mine: gemdeploy.stages chains them (for the CLI, api and tune)."""
    edges = folder_imports()
    assert ("stages", "mine") in edges and ("stages", "compact") in edges  # the chain is where they meet
    assert ("mine", "compact") not in edges and ("compact", "mine") not in edges


def test_the_walk_finds_a_cycle_through_an_import_inside_a_function(tmp_path, monkeypatch):
    """The check itself: two folders that import each other, one of them only inside a function, are a cycle."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "__init__.py").write_text("from gemdeploy.b import thing\n")
    (tmp_path / "b" / "__init__.py").write_text("thing = 1\n\ndef later():\n    from gemdeploy.a import x\n")
    monkeypatch.setitem(ROOTS, "gemdeploy", tmp_path)
    for name in ("gemdeploy.cli", "gemdeploy.exporters", "gemdeploy.calibration"):
        monkeypatch.delitem(ROOTS, name)
    assert _cycles(folder_imports()) == [["a", "b"]]
