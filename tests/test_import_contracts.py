"""Each import-linter contract in pyproject.toml catches the violation it exists for.

`make lint` shows the contracts kept on the real package; these tests copy the
package, plant one forbidden import per contract and show that contract breaks,
so a contract that silently matches nothing (a renamed module, a typo in a layer)
fails here instead of passing forever.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# contract id -> (file in the package, the import planted in it)
VIOLATIONS = {
    "house": ("errors.py", "import sitq.queue"),
    "storage": ("backends/base.py", "import sitq.backends.sqlite"),
    "backends-below": ("backends/common.py", "import sitq.serialization"),
    "no-backend-above-core": ("batch/__init__.py", "import sitq.backends"),
    "backend-modules-private": ("queue.py", "import sitq.backends.postgres"),
    "worker-uses-storage": ("worker/__init__.py", "import sitq.sync_queue"),
    "commands-on-top": ("workflow/__init__.py", "import sitq.workflow.cli"),
}


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "sitq", tmp_path / "sitq", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint(root: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    selected = [arg for contract in contracts for arg in ("--contract", contract)]
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *selected, "pyproject.toml"],
        cwd=root,
        # The copy first on the path, so the graph is built from it, not the installed package.
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_contract_is_planted_once() -> None:
    declared = {
        line.split("=", 1)[1].strip().strip('"')
        for line in (ROOT / "pyproject.toml").read_text().splitlines()
        if line.startswith("id = ")
    }
    assert declared == set(VIOLATIONS)


def test_the_copy_keeps_every_contract(tmp_path: Path) -> None:
    run = _lint(_copy(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(VIOLATIONS)} kept, 0 broken" in run.stdout


@pytest.mark.parametrize("contract", sorted(VIOLATIONS))
def test_a_planted_import_breaks_its_contract(tmp_path: Path, contract: str) -> None:
    root = _copy(tmp_path)
    relative, planted = VIOLATIONS[contract]
    target = root / "sitq" / relative
    target.write_text(f"{planted}  # planted by the test\n{target.read_text()}")
    run = _lint(root, contract)
    assert run.returncode != 0, run.stdout + run.stderr
    assert "0 kept, 1 broken" in run.stdout, run.stdout + run.stderr
