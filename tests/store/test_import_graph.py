"""acre_store's modules import each other without a cycle (module-level imports; those inside functions,
which run late on purpose, are not counted)."""
from __future__ import annotations

import ast
import os

import acre_store

PKG_DIR = os.path.dirname(acre_store.__file__)


def _modules() -> dict[str, str]:
    """Module name -> file, for every module of the package except the generated protobuf code."""
    out = {}
    for dirpath, dirs, files in os.walk(PKG_DIR):
        dirs[:] = [d for d in dirs if d not in ("_proto", "__pycache__")]
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), os.path.dirname(PKG_DIR))[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = os.path.join(dirpath, f)
    return out


def _top_level_imports(name: str, path: str, modules: dict[str, str]) -> set[str]:
    """The package modules `name` imports at module level (in `if`/`try` blocks there too)."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    tree = ast.parse(open(path).read(), path)
    found: set[str] = set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.If, ast.Try)):
            todo.extend(ast.iter_child_nodes(node))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for a in node.names:  # `from . import x` imports the module x when there is one
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def test_no_import_cycle():
    modules = _modules()
    graph = {m: _top_level_imports(m, p, modules) for m, p in modules.items()}
    assert "acre_store.store" in graph and "acre_store.tiers.base" in graph
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        for dep in sorted(graph[m]):
            visit(dep, path + [m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])


def test_client_does_not_import_the_embedded_store():
    modules = _modules()
    assert "acre_store.embedded" not in _top_level_imports("acre_store.client", modules["acre_store.client"], modules)
