"""sitq.workflow under bad input: values that look like shell, YAML bombs and huge
files, failed items as failed tasks, and the warnings validation gives."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from workflow_support import run_cli, run_id_of, workflow_env

from sitq.workflow import Workflow


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The working directory a workflow runs in."""
    path = tmp_path / "work"
    path.mkdir()
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _run(work: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("run", *args, cwd=work, env=workflow_env(tmp_path))


# -- 20.2: only text written in the file is ever run as a command --------------------------

PARAM_ITEMS = """
params:
  files: []
steps:
  - name: each
    task: batch
    inputs:
      items: "{{ files }}"
      task:
        type: echo
        message: "{{ item }}"
"""

RESULT_ITEMS = """
steps:
  - name: first
    type: python
    code: |
      return params['value']
  - name: each
    task: batch
    inputs:
      items: "{{ steps.first.result }}"
      task:
        type: echo
        message: "{{ item }}"
"""


def test_a_param_that_looks_like_a_command_is_never_run(tmp_path: Path, work: Path) -> None:
    marker = work / "MARKER"
    file = _write(work / "wf.yaml", PARAM_ITEMS)
    proc = _run(work, tmp_path, str(file), "-p", f"files=$(touch {marker})")
    assert not marker.exists(), "a -p value was run as a shell command"
    assert proc.returncode == 1
    assert "items must give a list, but gave str '$(touch" in proc.stdout


def test_a_step_result_that_looks_like_a_command_is_never_run(tmp_path: Path, work: Path) -> None:
    marker = work / "MARKER"
    file = _write(work / "wf.yaml", RESULT_ITEMS)
    proc = _run(work, tmp_path, str(file), "-p", f"value=$(touch {marker})")
    assert not marker.exists(), "an earlier step's result was run as a shell command"
    assert proc.returncode == 1
    assert "step 'each': items must give a list" in proc.stdout


def test_a_command_written_in_the_file_still_gives_items(tmp_path: Path, work: Path) -> None:
    (work / "a.txt").write_text("")
    (work / "b.txt").write_text("")
    text = PARAM_ITEMS.replace('"{{ files }}"', "$(ls {{ folder | quote }})")
    report = Workflow.from_string(text, "wf.yaml").run(
        {"folder": str(work)}, db=tmp_path / "s.db", executor="local"
    )
    assert report.ok, report.error
    assert report.steps["each"].result == ["a.txt", "b.txt"]


QUOTED_SHELL = """
steps:
  - name: each
    task: batch
    inputs:
      items: "{{ values }}"
      task:
        type: shell
        command: "printf '%s\\n' {{ item | quote }}"
"""


def test_an_item_cannot_inject_commands_into_a_quoted_shell_step(
    tmp_path: Path, work: Path
) -> None:
    marker = work / "MARKER"
    file = _write(work / "wf.yaml", QUOTED_SHELL)
    values = f'["a; touch {marker}", "$(touch {marker})", "`touch {marker}`", "it\'s"]'
    proc = _run(work, tmp_path, str(file), "-p", f"values={values}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not marker.exists(), "an item value ran as a command"
    assert f"'a; touch {marker}'" in proc.stdout and "\"it's\"" in proc.stdout
    assert "warning:" not in proc.stdout  # quoted: nothing to warn about


def test_an_unquoted_value_in_a_shell_command_is_warned_about(tmp_path: Path, work: Path) -> None:
    file = _write(work / "wf.yaml", QUOTED_SHELL.replace("{{ item | quote }}", "{{ item }}"))
    proc = _run(work, tmp_path, str(file), "-p", 'values=["x"]')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warning = proc.stdout.splitlines()[0]
    assert warning.startswith("warning: ") and "wf.yaml:9: step 'each':" in warning
    assert "field 'command' inserts {{ item }} into a shell command unquoted" in warning
    assert "write {{ item | quote }}" in warning
    run_id_of(proc.stdout)  # the run went ahead
    workflow = Workflow.from_yaml(file)
    assert len(workflow.warnings) == 1


# -- 19.7: python code is not a template ---------------------------------------------------


def test_a_template_in_python_code_is_warned_about() -> None:
    text = """
steps:
  - name: a
    type: python
    code: |
      name = "{{ params.name }}"
      braces = f"{{x}}"
      return name
"""
    (warning,) = Workflow.from_string(text, "wf.yaml").warnings
    assert warning.startswith("wf.yaml:6: step 'a': python `code` is not a template")
    clean = text.replace('"{{ params.name }}"', "params['name']")
    assert Workflow.from_string(clean, "wf.yaml").warnings == []
