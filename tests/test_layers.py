"""The import layers of pyproject.toml's [tool.importlinter] contracts: no cycles, the harness's packages in
layers, confined code (what runs beside the method's untrusted code) importing nothing of the harness's side,
and the harness's side importing nothing confined. Checked with import-linter on the real tree, and shown to
catch a planted violation of each."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("importlinter", reason="import-linter is a dev dependency (pip install -e '.[dev]')")


def _lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the tree at ``root``, from a fresh interpreter whose imports resolve there."""
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)


def _copy_tree(tmp_path: Path) -> Path:
    for name in ("harness", "q0_reference"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_layer_contract():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, planted, contract", [
    ("harness/confined/method_process.py", "import harness.server.meter", "Confined code imports nothing of the harness's side"),
    ("harness/confined/context.py", "import harness.data.store", "Confined code imports nothing of the harness's side"),
    ("harness/eval/remote_model.py", "import harness.confined.eval_zygote", "Nothing of the harness's side imports confined"),
    ("harness/run/runner.py", "import harness.contract", "Nothing of the harness's side imports confined"),
    ("harness/rules/tracks.py", "import harness.run.runner", "No import cycles"),
    ("harness/data/store.py", "import harness.eval.ensemble", "The harness's side is layered"),
    ("q0_reference/model.py", "import q0_reference.recipes", "No import cycles"),
])
def test_a_planted_import_breaks_its_contract(tmp_path, module, planted, contract):
    root = _copy_tree(tmp_path)
    path = root / module
    path.write_text(path.read_text() + f"\n\ndef _planted():\n    {planted}  # noqa\n")
    result = _lint(root)
    assert result.returncode != 0
    broken = result.stdout[result.stdout.index("Broken contracts"):]
    assert contract in broken, broken[:3000]
