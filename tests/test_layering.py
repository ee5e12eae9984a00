"""The module graph: no import cycles, every module imports on its own, and the library layers never import
the applications built on them (models and explore know nothing of pretraining, runs or the CLI)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cxrfa"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(node: ast.stmt, package: str) -> set[str]:
    """cxrfa modules one import statement loads (``from a.b import c`` loads a.b, and a.b.c if a module)."""
    names: set[str] = set()
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative import
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(
                "."
            )
        names = {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {n for n in names if n in MODULES}


def _imports(module: str, top_level_only: bool) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if _is_type_checking(node):
            continue
        found |= _imported(node, package)
        if isinstance(node, (ast.If, ast.Try, ast.With)):  # still module level
            stack += [
                *getattr(node, "body", []),
                *getattr(node, "orelse", []),
                *getattr(node, "finalbody", []),
            ]
            stack += [s for h in getattr(node, "handlers", []) for s in h.body]
        elif not top_level_only:
            stack += [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
    return found - {module}


def _loads(module: str) -> set[str]:
    """What importing ``module`` runs first: its top-level imports and their enclosing packages (a package
    that encloses ``module`` itself is already being initialised, so it is not an edge)."""
    out = set()
    for target in _imports(module, top_level_only=True):
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            parent = ".".join(parts[:i])
            if parent in MODULES and not (module == parent or module.startswith(parent + ".")):
                out.add(parent)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every back edge of a depth-first walk, as ``a -> b -> a``; empty iff the graph has no cycle."""
    cycles: list[str] = []
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycles_between_modules() -> None:
    assert _cycles({m: _loads(m) for m in MODULES}) == []


def test_the_checker_sees_cycles_and_only_top_level_edges() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert _cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
    assert "cxrfa.config" in _loads("cxrfa.cell")  # top level
    assert "cxrfa.models" not in _loads("cxrfa.postrun")  # imported inside load_run only
    assert "cxrfa.models" in _imports("cxrfa.postrun", top_level_only=False)


LIBRARY_MUST_NOT_IMPORT = {
    "cxrfa.models": (
        "cxrfa.pretrain",
        "cxrfa.standins",
        "cxrfa.cell",
        "cxrfa.record",
        "cxrfa.postrun",
        "cxrfa.cli",
    ),
    "cxrfa.explore": (
        "cxrfa.cell",
        "cxrfa.record",
        "cxrfa.postrun",
        "cxrfa.cli",
        "cxrfa.ablate",
        "cxrfa.tuning",
    ),
    "cxrfa.data": ("cxrfa.models", "cxrfa.cell", "cxrfa.record", "cxrfa.postrun", "cxrfa.cli"),
}


@pytest.mark.parametrize("layer", sorted(LIBRARY_MUST_NOT_IMPORT))
def test_library_layers_never_import_the_applications(layer: str) -> None:
    bad = [
        f"{m} imports {t}"
        for m in MODULES
        if m == layer or m.startswith(layer + ".")
        for t in _imports(m, top_level_only=False)  # deferred imports count too
        if t.startswith(LIBRARY_MUST_NOT_IMPORT[layer])
    ]
    assert bad == []


_ISOLATED = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for key in [k for k in sys.modules if k == "cxrfa" or k.startswith("cxrfa.")]:
        del sys.modules[key]  # each module starts from no cxrfa module loaded; third-party ones stay cached
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_on_its_own() -> None:
    """Each module imported first, with no other cxrfa module loaded: a cycle that import order elsewhere
    hides fails here. (One interpreter with the cxrfa modules purged between imports: seconds, where one
    interpreter per module takes minutes.)"""
    modules = sorted(m for m in MODULES if not m.endswith("__main__"))  # __main__ runs the CLI
    proc = subprocess.run([sys.executable, "-c", _ISOLATED, *modules], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
