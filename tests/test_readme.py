"""The README's first steps say how to get what `make test` needs from the system."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
