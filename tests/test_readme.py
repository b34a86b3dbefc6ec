"""The README's first steps say how to get what `make test` needs from the system."""

from __future__ import annotations

import re
from pathlib import Path

from readme_examples import EXAMPLES, example_commands

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"


def test_readme_says_how_to_get_chromium_and_postgresql_beside_make_test() -> None:
    readme = (ROOT / "README.md").read_text()
    first_steps = readme.split("## Using it", 1)[0]
    assert "make test " in first_steps
    ci_install = re.search(
        r"apt-get install -y -qq ([\w ,.-]+?) >", (ROOT / ".ci" / "run").read_text()
    )
    assert ci_install, ".ci/run no longer installs the browser"
    # The same packages CI installs, named where a newcomer reads `make test`.
    assert f"apt-get install {ci_install.group(1)}" in " ".join(first_steps.split())
    assert "apt-get install postgresql" in " ".join(first_steps.split())
    assert "$SITQ_TEST_POSTGRES" in first_steps


def test_readme_states_the_dashboard_token_minimum_and_that_python_code_is_no_template() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "a token of at least 16 characters" in readme
    assert "`code` is Python, not a template" in readme


def test_every_example_is_in_the_readme_with_the_command_its_test_runs() -> None:
    """Every example file and folder under examples/ is in README.md's Examples
    section with its command, and a test runs that very command: a file through
    ``run_readme_example`` (which runs the README's line), a folder's test from
    ``example_commands()`` (the README's block)."""
    shipped = sorted(
        f"examples/{path.name}"
        for path in EXAMPLES.iterdir()
        if path.suffix == ".py" or (path.is_dir() and path.name != "__pycache__")
    )
    commands = example_commands()
    assert [name for name in shipped if name not in commands] == [], "not in README.md"
    assert [name for name in commands if name not in shipped] == [], "no such example"
    tests = "\n".join(path.read_text() for path in sorted(TESTS.glob("test_*.py")))
    for example, lines in commands.items():
        if example.endswith(".py"):
            assert lines == [f"python {example}"], example
            assert f'run_readme_example("{example}", ' in tests, f"no test runs {example}"
        else:
            assert lines, f"no command for {example}"
            assert f'example_commands()["{example}"]' in tests, f"no test runs {example}"
