"""Type checkers see a registered task's own signature on `enqueue` (ParamSpec):
mypy, run for real on a small program, accepts right calls and rejects wrong ones."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROGRAM = """
from sitq import TaskQueue

queue = TaskQueue("unused.db")


@queue.task
def add(a: int, b: int) -> int:
    return a + b


@queue.task(name="greet", max_retries=2)
async def greet(name: str) -> str:
    return name


async def main() -> None:
    await add.enqueue(1, 2)
    await greet.enqueue("ada")
    await add.enqueue("one", 2)  # line 19: wrong type
    await greet.with_options(priority=1).enqueue(3)  # line 20: wrong type
    reveal_type(add(1, 2))  # line 21
"""


def test_registered_tasks_are_type_checked(tmp_path: Path) -> None:
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent))
    if mypy is None:
        pytest.skip("mypy is not installed (it is in the dev extra)")
    program = tmp_path / "program.py"
    program.write_text(PROGRAM.lstrip("\n"))
    proc = subprocess.run(
        [mypy, "--follow-imports=silent", "--no-error-summary", "--no-incremental", "program.py"],
        cwd=tmp_path,
        env={"MYPYPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = proc.stdout.splitlines()
    errors = [line for line in lines if ": error:" in line]
    assert len(errors) == 2, proc.stdout + proc.stderr
    assert errors[0].startswith("program.py:19:") and 'incompatible type "str"' in errors[0]
    assert errors[1].startswith("program.py:20:") and 'incompatible type "int"' in errors[1]
    assert 'program.py:21: note: Revealed type is "int"' in lines
