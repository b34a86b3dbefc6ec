"""sitq.workflow under bad input: values that look like shell, YAML bombs and huge
files, failed items as failed tasks, and the warnings validation gives."""

from __future__ import annotations

import asyncio
import resource
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from workflow_support import run_cli, run_id_of, workflow_cmd, workflow_env

from sitq import TaskQueue, TaskStatus
from sitq.workflow import Workflow, WorkflowValidationError
from sitq.workflow.loader import MAX_BYTES
from sitq.workflow.state import PREVIEW_CHARS, StateStore, preview


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
    assert f"'a; touch {marker}'" in proc.stdout and '"it\'s"' in proc.stdout
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
        assert (
            items[1].traceback is not None
            and "File \"<workflow step 'check'>\"" in items[1].traceback
        )
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


# -- 20.13: YAML that costs too much is refused --------------------------------------------


def _alias_bomb(levels: int = 9) -> str:
    """Nine lists of nine aliases of the one before: 9**9 strings from ~500 bytes."""
    lines = ["params:", '  a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for n in range(1, levels):
        lines.append(f"  a{n}: &a{n} [" + ",".join([f"*a{n - 1}"] * 9) + "]")
    lines += ["steps:", "  s:", "    type: echo", "    message: hi"]
    return "\n".join(lines) + "\n"


def _limited(memory: int) -> Callable[[], None]:
    """A preexec_fn capping the child's address space, so that a regression fails the
    test (MemoryError) rather than take the machine down."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return limit


#: Bounds a regression; a refusal takes well under a second.
BOMB_TIMEOUT = 60.0
CHILD_MEMORY = 2 * 1024**3


def _run_limited(work: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        workflow_cmd("run", *args),
        cwd=work,
        env=workflow_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=BOMB_TIMEOUT,
        preexec_fn=_limited(CHILD_MEMORY),
    )


def test_an_alias_bomb_workflow_is_refused_quickly(tmp_path: Path, work: Path) -> None:
    file = _write(work / "bomb.yaml", _alias_bomb())
    assert file.stat().st_size < 1024
    proc = _run_limited(work, tmp_path, str(file))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "MemoryError" not in proc.stderr and "Traceback" not in proc.stderr
    assert "bomb.yaml: invalid YAML: its aliases (*name) expand it to" in proc.stderr
    assert not (tmp_path / "sitq.db").exists()  # refused before anything was recorded


def test_an_alias_bomb_param_file_is_refused_quickly(tmp_path: Path, work: Path) -> None:
    file = _write(work / "wf.yaml", PARAM_ITEMS)
    data = _write(work / "data.yaml", _alias_bomb().split("steps:")[0].replace("params:", "x:"))
    proc = _run_limited(work, tmp_path, str(file), "-p", f"files=@{data}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "MemoryError" not in proc.stderr and "Traceback" not in proc.stderr
    assert "data.yaml: invalid YAML: its aliases (*name) expand it to" in proc.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("steps: &s\n  a: *s\n", "wf.yaml:1: invalid YAML: an alias refers to the list or mapping"),
        ("x: " + "[" * 300 + "]" * 300 + "\nsteps: {}\n", "nest more than 200 deep"),
    ],
)
def test_self_referring_and_deeply_nested_yaml_is_refused(text: str, expected: str) -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        Workflow.from_string(text, "wf.yaml")
    assert expected in str(caught.value)


def test_a_huge_workflow_file_is_refused_unread_unless_the_limit_is_raised(
    tmp_path: Path, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = '  s{n}:\n    type: echo\n    message: "hello {n}"\n'
    text = "steps:\n" + "".join(step.format(n=n) for n in range(120_000))
    file = _write(work / "big.yaml", text)
    assert file.stat().st_size > 4_000_000
    with pytest.raises(WorkflowValidationError) as caught:
        Workflow.from_yaml(file)
    message = str(caught.value)
    assert f"big.yaml: the workflow is {file.stat().st_size:,} bytes, more than" in message
    assert "$SITQ_WORKFLOW_MAX_BYTES" in message and "--param NAME=@FILE" in message
    with pytest.raises(WorkflowValidationError):
        Workflow.from_string(text, "big.yaml")  # the same limit for text
    small = _write(work / "small.yaml", "steps:\n" + step.format(n=0))
    monkeypatch.setenv("SITQ_WORKFLOW_MAX_BYTES", "40")
    with pytest.raises(WorkflowValidationError, match="more than the 40 sitq reads"):
        Workflow.from_yaml(small)
    monkeypatch.setenv("SITQ_WORKFLOW_MAX_BYTES", "1000")
    assert Workflow.from_yaml(small).step_names == ["s0"]


@pytest.mark.slow
def test_a_workflow_file_at_the_size_limit_loads_within_bounds(tmp_path: Path, work: Path) -> None:
    step = '  s{n}:\n    type: echo\n    message: "hello {n} {{{{ params.x | default(1) }}}}"\n'
    text = "steps:\n" + "".join(step.format(n=n) for n in range(12_000))
    file = _write(work / "wf.yaml", text)
    assert 0.8 * MAX_BYTES < file.stat().st_size <= MAX_BYTES
    load = f"Workflow.from_yaml({str(file)!r})"
    check = f"from sitq.workflow import Workflow; print(len({load}.step_names))"
    proc = subprocess.run(
        [sys.executable, "-c", check],
        env=workflow_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=BOMB_TIMEOUT,
        preexec_fn=_limited(CHILD_MEMORY),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "12000"


def test_previews_of_huge_values_are_bounded() -> None:
    bomb: Any = ["lol"] * 9
    for _ in range(12):
        bomb = [bomb] * 9  # 9**13 strings, shared
    text = preview({"x": bomb})
    assert text.startswith("{'x': [[[[") and text.endswith("... (truncated)")
    assert len(text) <= PREVIEW_CHARS + len("... (truncated)")
    assert preview("y" * 10**7, 20) == "'" + "y" * 19 + "... (truncated)"
    looped: list[Any] = []
    looped.append(looped)
    assert preview(looped) == "[" * 51 + "..." + "]" * 51  # depth-capped, no recursion
    assert preview([[1, 2], {"a": (3,)}]) == "[[1, 2], {'a': (3,)}]"


# -- 19.3: a param python code reads is checked before the run; plain steps' failures ------

CODE_PARAMS = """
steps:
  split:
    type: python
    code: |
      numbers = params['numbers']
      size = params.batch_size
      return [numbers[i:i + size] for i in range(0, len(numbers), size)]
"""


def test_a_param_python_code_reads_is_checked_before_the_run(tmp_path: Path, work: Path) -> None:
    file = _write(work / "wf.yaml", CODE_PARAMS)
    proc = _run(work, tmp_path, str(file), "-p", "numbers=[1,2,3]")
    assert proc.returncode == 1
    assert (
        "wf.yaml:6: step 'split': code uses params['batch_size'], but there is no param "
        "'batch_size'" in proc.stderr
    )
    assert "--param batch_size=VALUE" in proc.stderr and "numbers" not in proc.stderr
    assert not (tmp_path / "sitq.db").exists()  # refused before the run was recorded
    done = _run(work, tmp_path, str(file), "-p", "numbers=[1,2,3]", "-p", "batch_size=2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "result of split: [[1, 2], [3]]" in done.stdout
    # Code that reads params another way (get, in, a loop) is not second-guessed.
    loose = CODE_PARAMS.replace("params.batch_size", "params.get('batch_size', 2)")
    assert Workflow.from_string(loose, "wf.yaml").validate({"numbers": [1]})


def test_a_failed_commands_stderr_is_shown_on_its_own_indented_lines(
    tmp_path: Path, work: Path
) -> None:
    text = "steps:\n  a:\n    type: shell\n    command: 'echo oops >&2; exit 3'\n"
    proc = _run(work, tmp_path, str(_write(work / "wf.yaml", text)))
    assert proc.returncode == 1
    assert "failed a: command exited with status 3: echo oops >&2; exit 3\n    oops\n" in (
        proc.stdout
    ), proc.stdout
    assert "\\n" not in proc.stdout  # no escaped newline shown


def test_a_failed_plain_step_is_reported_without_an_item(tmp_path: Path, work: Path) -> None:
    text = "steps:\n  only:\n    type: python\n    code: |\n      raise ValueError('boom')\n"
    proc = _run(work, tmp_path, str(_write(work / "wf.yaml", text)))
    assert proc.returncode == 1
    assert "failed only: ValueError: boom" in proc.stdout
    assert "None" not in proc.stdout
    report = Workflow.from_string(text, "wf.yaml").run(db=tmp_path / "s.db", executor="local")
    assert report.failures == [
        {"step": "only", "index": None, "item": None, "error": "ValueError: boom"}
    ]


# -- stored text is shown escaped: it cannot drive the terminal ------------------------------

ESCAPING_ITEM = """
steps:
  - name: each
    for_each: [1, 2]
    continue_on_error: true
    type: python
    code: |
      if item == 2:
          raise ValueError("\\x1b[2Jcleared")
      return item
"""


def test_workflow_status_escapes_control_characters_of_stored_text(
    tmp_path: Path, work: Path
) -> None:
    _write(work / "wf.yaml", ESCAPING_ITEM)
    env = workflow_env(tmp_path)
    proc = run_cli("run", "wf.yaml", cwd=work, env=env)
    assert proc.returncode != 0
    run_id = run_id_of(proc.stdout)
    assert "\x1b" not in proc.stdout and "\\x1b[2Jcleared" in proc.stdout
    with sqlite3.connect(tmp_path / "sitq.db") as conn:  # as anyone who can write it may
        conn.execute(
            "UPDATE sitq_workflow_items SET item_preview = ?, result_preview = ? WHERE idx = 0",
            ("\x1b]0;title\x07", "\x1b[31mred"),
        )
        conn.execute("UPDATE sitq_workflow_runs SET error = ?", ("run\x1b[2J\nline 2",))
    conn.close()

    shown = run_cli("status", run_id, cwd=work, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert "\\x1b[2Jcleared" in shown.stdout  # the item's error
    assert "[0] \\x1b]0;title\\x07: succeeded" in shown.stdout
    assert "-> \\x1b[31mred" in shown.stdout
    assert "error: run\\x1b[2J\nline 2" in shown.stdout  # newlines kept for run errors
    listed = run_cli("status", cwd=work, env=env)
    assert listed.returncode == 0 and run_id in listed.stdout


# -- every problem at once, on the line of the field it is in ------------------------------

MANY_PROBLEMS = """\
steps:
  a:
    type: echo
    mesage: hi
  b:
    type: echo
    description: uses a missing step
    message: "{{ steps.nope.result }}"
  c:
    type: echo
    message: "{{ oops( }}"
  d:
    type: shell
    for_each:
      - 1
    command: "echo {{ steps.zz }} {{ params.n }}"
  e:
    type: echo
    message: "{{ steps.a.result }}"
"""


def test_every_steps_problems_are_reported_at_once_on_their_fields_lines() -> None:
    """A problem in one step does not hide the others': each is one line, on the
    line of the field it is in (not the step's), worded for the step's kind."""
    with pytest.raises(WorkflowValidationError) as caught:
        Workflow.from_string(MANY_PROBLEMS, "p.yaml")
    lines = str(caught.value).splitlines()[1:]
    assert [line.strip().split(": ", 3)[:3] for line in lines] == [
        [
            "p.yaml:4",
            "step 'a'",
            "unknown key 'mesage' for an echo step; did you mean 'message'? allowed",
        ],
        ["p.yaml:3", "step 'a'", "an echo step needs `message`"],
        ["p.yaml:8", "step 'b'", "field 'message'"],
        ["p.yaml:11", "step 'c'", "field 'message'"],
        ["p.yaml:16", "step 'd'", "field 'command'"],
    ], lines
    assert "refers to steps.nope, but there is no step 'nope'" in lines[2]
    assert "template syntax error" in lines[3] and "steps.zz" in lines[4]
    # Step a could not be read, yet e may refer to it: a is a step of the file.
    assert not any("step 'e'" in line for line in lines)


def test_a_params_problem_names_the_line_of_its_field() -> None:
    text = MANY_PROBLEMS.split("  a:")[0] + "  d:" + MANY_PROBLEMS.split("  d:")[1]
    text = text.replace("{{ steps.zz }} ", "").split("  e:")[0]
    with pytest.raises(WorkflowValidationError) as caught:
        Workflow.from_string(text, "p.yaml").validate({})
    assert str(caught.value).startswith(
        "p.yaml:6: step 'd': field 'command': uses params.n, but there is no param 'n'"
    ), str(caught.value)
    items = "steps:\n  b:\n    task: batch\n    inputs:\n      items: '{{ item }}'\n" \
        "      task:\n        type: echo\n        message: hi\n"  # fmt: skip
    with pytest.raises(WorkflowValidationError, match=r"p.yaml:5: step 'b': field 'items'"):
        Workflow.from_string(items, "p.yaml")
    each = "steps:\n  b:\n    type: echo\n    message: hi\n    for_each: '{{ item }}'\n"
    with pytest.raises(WorkflowValidationError, match=r"p.yaml:5: step 'b': field 'for_each'"):
        Workflow.from_string(each, "p.yaml")


def test_a_step_that_cannot_be_read_is_still_a_step_others_may_use() -> None:
    text = (
        "steps:\n  a:\n    type: ech\n  e:\n    type: echo\n    message: '{{ steps.a.result }}'\n"
    )
    with pytest.raises(WorkflowValidationError) as caught:
        Workflow.from_string(text, "p.yaml")
    assert str(caught.value).startswith("p.yaml:3: step 'a': unknown step kind 'ech'")
    assert "step 'e'" not in str(caught.value)


def test_one_failed_item_of_one_is_worded_in_the_singular(tmp_path: Path, work: Path) -> None:
    text = "steps:\n  each:\n    type: python\n    for_each: [7]\n    code: |\n" \
        "      raise ValueError('bad')\n"  # fmt: skip
    report = Workflow.from_string(text, "wf.yaml").run(db=tmp_path / "state.db", executor="local")
    assert report.status == "failed"
    assert "1 of 1 item failed; first, item 0: ValueError: bad" in str(report.error)


async def test_a_failed_look_for_results_does_not_trip_the_items_waiting_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The items waiting when a look for their results failed fail with it; an item
    that waits afterwards is failed by the grace period as usual, not by them."""
    from sitq.workflow.executors import WorkerExecutor, WorkerWatch

    monkeypatch.setenv("SITQ_WORKFLOW_NO_WORKER_GRACE", "0")

    class Queue:  # what the worker executor asks of its queue
        looks = 0

        def describe(self) -> str:
            return "a fake database"

        def with_options(self, **options: Any) -> Queue:
            return self

        async def get_results(self, task_ids: list[str]) -> dict[str, Any]:
            self.looks += 1
            if self.looks == 1:
                raise ConnectionError("the database is away")
            return {}

        async def get_result(self, task_id: str, timeout: float) -> None:
            return None

        async def live_workers(self, queue: str) -> list[Any]:
            return []

    queue: Any = Queue()
    executor = WorkerExecutor(queue, WorkerWatch(queue, None, "a resume"), "q")
    with pytest.raises(ConnectionError):
        await executor._wait("first", "q")
    outcome = await asyncio.wait_for(executor._wait("second", "q"), 10)
    assert not outcome.ok and "task second of this item did not finish" in outcome.error
