"""The examples as README.md's "Examples" section runs them.

That section gives, in ```sh blocks, the command that runs each example file
(``python examples/NAME.py``) and, for an example folder, a block that starts
with ``cd examples/FOLDER`` followed by its commands. The example tests run these
very lines (``run_readme_example``), so the README cannot drift from what is
tested; tests/test_readme.py checks that every example is there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
#: The section of README.md that lists the examples.
SECTION = "## Examples"
#: Bounds a hang; not an expected duration.
EXAMPLE_TIMEOUT = 120.0


def examples_section() -> str:
    """The text of README.md's examples section (up to the next ``## `` heading)."""
    text = README.read_text()
    assert f"\n{SECTION}\n" in text, f"README.md has no {SECTION!r} section"
    return text.split(f"\n{SECTION}\n", 1)[1].split("\n## ", 1)[0]


def _command(line: str) -> str:
    """A line of a ```sh block without its trailing comment."""
    return line.partition("  #")[0].strip()


def example_commands() -> dict[str, list[str]]:
    """Each example the section names (``examples/NAME.py``, or ``examples/FOLDER``
    for a block starting ``cd examples/FOLDER``), with the commands that run it."""
    commands: dict[str, list[str]] = {}
    for body in re.findall(r"^```sh\n(.*?)^```", examples_section(), re.M | re.S):
        lines = [c for c in map(_command, body.splitlines()) if c]
        if lines and lines[0].startswith("cd examples/"):
            folder = lines[0].removeprefix("cd ")
            assert folder not in commands, f"{folder} is given twice"
            commands[folder] = lines[1:]
            continue
        for line in lines:
            found = re.fullmatch(r"python (examples/[\w.-]+\.py)", line)
            assert found, f"not `python examples/NAME.py` nor in a `cd examples/...` block: {line}"
            assert found.group(1) not in commands, f"{found.group(1)} is given twice"
            commands[found.group(1)] = [line]
    return commands


def readme_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment the README's commands run in: this environment's `python`
    and `sitq` first on PATH (as after `make install` and activating .venv), no
    $SITQ_DB, and temporary files under ``tmp_path`` (so a leftover is seen)."""
    env = dict(os.environ)
    env.pop("SITQ_DB", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    env["TMPDIR"] = str(temp)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_readme_example(example: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run the README's command for the example file ``example`` (``examples/NAME.py``),
    as written, through the shell, from a directory where ``examples/`` is the
    repository's (the working directory is a fresh one under ``tmp_path``, so a
    stray file lands there); it must exit 0."""
    [command] = example_commands()[example]
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "examples").symlink_to(EXAMPLES, target_is_directory=True)
    proc = subprocess.run(
        ["/bin/sh", "-c", command],
        cwd=work,
        env=readme_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT,
    )
    output = f"{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, f"`{command}`: exit {proc.returncode}\n{output}"
    return proc
