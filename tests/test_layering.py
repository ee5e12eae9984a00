"""The module graph: the layers, the two tool imports (mlflow, optuna) and "no cycles" are import-linter
contracts in pyproject.toml; this file runs them, shows they catch a violation, and checks what they cannot
express: every module imports on its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cxrfa"

# the `lint-imports` command, with no cache (the tree it checks is not always this one)
_LINT = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the package under ``root`` with the contracts of ``root/pyproject.toml``."""
    env = {**os.environ, "PYTHONPATH": str(root)}  # this copy of cxrfa, not the installed one
    return subprocess.run([*_LINT, "--no-cache"], cwd=root, env=env, capture_output=True, text=True)


def test_the_import_contracts_hold() -> None:
    proc = _lint(REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_each_contract_catches_its_violation(tmp_path: Path) -> None:
    """A copy of the package with one violation per contract, deferred imports included: every contract
    breaks, naming the import."""
    shutil.copytree(PACKAGE, tmp_path / "cxrfa", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    pkg = tmp_path / "cxrfa"
    _append(pkg / "config" / "run.py", "\nimport optuna  # noqa: E402\n")
    _append(pkg / "train.py", "\n\ndef _tracked() -> None:\n    import mlflow  # noqa: F401\n")
    # upward: the bottom layer reaching the UI server (which imports nothing of it, so no cycle either)
    _append(pkg / "claims.py", "\n\ndef _serve() -> None:\n    from cxrfa import uiserver  # noqa: F401\n")
    # within one package, so only the cycle contract sees it: study imports space
    _append(
        pkg / "tuning" / "space.py",
        "\n\ndef _back() -> None:\n    from cxrfa.tuning import study  # noqa: F401\n",
    )

    proc = _lint(tmp_path)
    out = proc.stdout
    assert proc.returncode == 1, out[-4000:] + proc.stderr[-2000:]
    for contract in (
        "Layers",
        "Only cxrfa.tracking imports mlflow",
        "Only cxrfa.tuning imports optuna",
        "No import cycles",
    ):
        assert any(line.startswith(contract) and " BROKEN" in line for line in out.splitlines()), contract
    assert "cxrfa.config.run -> optuna" in out
    assert "cxrfa.train -> mlflow" in out
    assert "cxrfa.claims is not allowed to import cxrfa.uiserver" in out
    assert "No cycles are allowed in cxrfa.tuning" in out


def _modules() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


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
    """Each module imported first, with no other cxrfa module loaded: an import-time cycle that import order
    elsewhere hides fails here. (One interpreter with the cxrfa modules purged between imports: seconds, where
    one interpreter per module takes minutes.)"""
    modules = [m for m in _modules() if not m.endswith("__main__")]  # __main__ runs the CLI
    proc = subprocess.run([sys.executable, "-c", _ISOLATED, *modules], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
