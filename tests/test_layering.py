"""The private-name half of the layering check (.ci/check_private_imports.py).

import-linter checks which modules import which (pyproject.toml, `make lint-arch`);
this script checks names. These tests build small packages with deliberate
violations and show it finds each one, and leaves what is allowed alone.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "check_private_imports.py"


def _checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_private_imports", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def _found(package: Path) -> list[str]:
    return list(_checker().violations(package))


@pytest.mark.parametrize(
    ("files", "offender"),
    [
        # The sync face reaching into the async one's privates.
        (
            {"queue.py": "_Enqueuer = 1\n", "sync_queue.py": "from pkg.queue import _Enqueuer\n"},
            "pkg.sync_queue imports private _Enqueuer from pkg.queue",
        ),
        # A relative import is resolved first.
        (
            {
                "queue.py": "def _helper(): ...\n",
                "batch/__init__.py": "",
                "batch/processor.py": "from ..queue import _helper\n",
            },
            "pkg.batch.processor imports private _helper from pkg.queue",
        ),
        # Imports for type checking only count too.
        (
            {
                "queue.py": "class _Enqueuer: ...\n",
                "registry.py": (
                    "from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n"
                    "    from pkg.queue import _Enqueuer\n"
                ),
            },
            "pkg.registry imports private _Enqueuer from pkg.queue",
        ),
        # A private module of another part.
        (
            {
                "backends/__init__.py": "",
                "backends/_rows.py": "",
                "cli.py": "import pkg.backends._rows\n",
            },
            "pkg.cli imports private _rows from pkg.backends._rows",
        ),
        # The root package's privates belong to the root package.
        ({"__init__.py": "_x = 1\n", "cli.py": "from pkg import _x\n"}, "pkg.cli imports private"),
        # Reaching into another part's object: the sync face calling the queue's internals.
        (
            {
                "queue.py": "class Queue:\n    def _new_tasks(self): ...\n",
                "sync_queue.py": (
                    "class Sync:\n"
                    "    def __init__(self, queue):\n"
                    "        self._queue = queue\n"
                    "    def run(self):\n"
                    "        return self._queue._new_tasks()\n"
                ),
            },
            "pkg.sync_queue uses self._queue._new_tasks",
        ),
        # ... or into another part's module through its name.
        (
            {
                "queue.py": "def _helper(): ...\n",
                "cli.py": "from pkg import queue\nqueue._helper()\n",
            },
            "pkg.cli uses queue._helper",
        ),
    ],
)
def test_a_private_name_across_parts_is_found(
    tmp_path: Path, files: dict[str, str], offender: str
) -> None:
    found = _found(_package(tmp_path, files))
    assert len(found) == 1
    assert offender in found[0]


def test_what_is_allowed_is_left_alone(tmp_path: Path) -> None:
    package = _package(
        tmp_path,
        {
            "__init__.py": "__version__ = '1'\n",
            # Inside one part (a top-level subpackage), modules share privates.
            "backends/__init__.py": "def _translate(): ...\n",
            "backends/base.py": "_SQL = ''\n",
            "backends/sqlite/__init__.py": "",
            "backends/sqlite/backend.py": (
                "from pkg.backends import _translate\n"
                "from pkg.backends.base import _SQL\n"
                "from ..base import _SQL as again\n"
            ),
            # Public names and dunders are fine anywhere; so are other packages' privates
            # and the namedtuple API.
            "cli.py": "from pkg import __version__\nfrom pkg.backends.base import *\n"
            "from os import _exit\nimport os\nos._exit\n"
            "from urllib.parse import urlsplit\nurlsplit('x')._replace(path='')\n",
            # A part's own privates on any object: the attribute is defined in the part.
            "queue.py": (
                "class Queue:\n"
                "    def __init__(self):\n"
                "        self._tasks = []\n"
                "    def merged(self, other):\n"
                "        return self._tasks + other._tasks\n"
            ),
        },
    )
    assert _found(package) == []


def test_the_script_exits_non_zero_on_a_violation(tmp_path: Path) -> None:
    package = _package(
        tmp_path, {"queue.py": "_x = 1\n", "sync_queue.py": "from pkg.queue import _x\n"}
    )
    failed = subprocess.run(
        [sys.executable, str(SCRIPT), str(package)], capture_output=True, text=True
    )
    assert failed.returncode == 1
    assert "pkg.sync_queue imports private _x from pkg.queue" in failed.stdout
    (package / "sync_queue.py").write_text("from pkg.queue import *\n")
    passed = subprocess.run(
        [sys.executable, str(SCRIPT), str(package)], capture_output=True, text=True
    )
    assert passed.returncode == 0, passed.stdout
