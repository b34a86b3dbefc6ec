"""sitq.workflow under bad input: values that look like shell, YAML bombs and huge
files, failed items as failed tasks, and the warnings validation gives."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from workflow_support import run_cli, run_id_of, workflow_env

from sitq import TaskQueue, TaskStatus
from sitq.workflow import Workflow
from sitq.workflow.state import StateStore


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


# -- 19.5: the task of a failed item ends FAILED -------------------------------------------

FAILING_ITEM = """
steps:
  - name: check
    for_each: [1, 2, 3]
    max_parallel: 3
    continue_on_error: true
    retry: {max_attempts: 2}
    type: python
    code: |
      import os
      if item == 2 and os.path.exists(params['flag']):
          raise ValueError(f"item {item} is bad")
      return item * 10
"""


async def test_a_failed_items_task_ends_failed_and_a_resume_redoes_it(
    tmp_path: Path, db_url: str, spawn_worker: Callable[..., Any]
) -> None:
    async with TaskQueue(db_url):
        pass  # the database exists before the worker opens it
    spawn_worker("--concurrency", "3", db=db_url).wait_started()
    flag = tmp_path / "flag"
    flag.write_text("")
    workflow = Workflow.from_string(FAILING_ITEM, "wf.yaml")
    report = await workflow.run_async({"flag": str(flag)}, db=db_url, executor="workers")
    assert report.status == "partial" and report.executor == "workers"
    (failure,) = report.failures
    assert failure["error"] == "ValueError: item 2 is bad"

    async with TaskQueue(db_url) as queue:
        items = await StateStore(queue).items(report.run_id, "check")
        assert [i.status for i in items] == ["succeeded", "failed", "succeeded"]
        assert items[1].attempts == 2 and items[1].error == "ValueError: item 2 is bad"
        assert items[1].traceback is not None and "File \"<workflow step 'check'>\"" in items[1].traceback
        task_ids = [i.task_id for i in items]
        assert all(task_ids)
        statuses = [await queue.status(t) for t in task_ids]  # type: ignore[arg-type]
        assert statuses == [TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.SUCCEEDED]
        failed = await queue.get_result(task_ids[1], timeout=0)  # type: ignore[arg-type]
        assert failed is not None and failed.error is not None
        assert failed.error.startswith("ItemFailed: ValueError: item 2 is bad")
        assert (await queue.stats())["totals"]["failed"] == 1

        # A resume does not take the failed task for a success: the item runs again.
        flag.unlink()
        resumed = await workflow.run_async(resume=report.run_id, db=db_url, executor="workers")
        assert resumed.ok, resumed.error
        assert resumed.steps["check"].result == [10, 20, 30]
        again = await StateStore(queue).items(report.run_id, "check")
        assert again[1].task_id not in (None, task_ids[1])
        assert await queue.status(again[1].task_id) == TaskStatus.SUCCEEDED  # type: ignore[arg-type]
