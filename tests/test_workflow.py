"""sitq.workflow: the seed page's examples as written, crash and resume, errors, retries,
validation, where items run, and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support import wait_until
from workflow_support import (
    CLI_TIMEOUT,
    WORKFLOW_EXAMPLES,
    LocalHTTPServer,
    items_of,
    run_cli,
    run_id_of,
    status_json,
    workflow_cmd,
    workflow_env,
)

from sitq import TaskQueue, TaskStatus
from sitq.workflow import Workflow, WorkflowValidationError
from sitq.workflow.cli import workflow as workflow_group
from sitq.workflow.loader import quote_bare_templates
from sitq.workflow.store import WorkflowStore

EXAMPLE = WORKFLOW_EXAMPLES


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The working directory a workflow runs in."""
    path = tmp_path / "work"
    path.mkdir()
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


# -- the seed page's examples (tests/test_examples.py runs each as its README shows) ----


def test_example_basic_usage(tmp_path: Path, work: Path) -> None:
    env = workflow_env(tmp_path)
    out = _ok(
        run_cli(
            "run",
            str(EXAMPLE / "basic_usage.yaml"),
            "-p",
            "numbers=[1,2,3,4,5,6,7]",
            "-p",
            "batch_size=3",
            cwd=work,
            env=env,
        )
    )
    assert "result of split_into_batches: [[1, 2, 3], [4, 5, 6], [7]]" in out
    assert "result of process_batches: [[2, 4, 6], [8, 10, 12], [14]]" in out
    assert "process_batches: 3/3 processed, 0 failed (100%)" in out
    status = status_json(run_id_of(out), work, env)
    assert [s["status"] for s in status["steps"]] == ["succeeded", "succeeded"]


def test_example_batch_configuration(tmp_path: Path, work: Path) -> None:
    out = _ok(
        run_cli(
            "run", str(EXAMPLE / "batch_configuration.yaml"), cwd=work, env=workflow_env(tmp_path)
        )
    )
    expected = [f"Processing {c}" for c in "abcde"]
    assert f"result of process_data: {expected!r}" in out


def test_example_parallel_processing(tmp_path: Path, work: Path) -> None:
    """max_parallel: 2 really runs two requests at once, and never more."""
    in_flight, peak = [0], [0]
    two_at_once = threading.Event()
    lock = threading.Lock()

    def respond(method: str, path: str, headers: dict, body: bytes) -> tuple[int, Any]:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
            if in_flight[0] >= 2:
                two_at_once.set()
        two_at_once.wait(10)  # the first request waits for a second one to arrive
        with lock:
            in_flight[0] -= 1
        return 200, {"path": path}

    with LocalHTTPServer(respond) as server:
        out = _ok(
            run_cli(
                "run",
                str(EXAMPLE / "parallel_processing.yaml"),
                "--http-base",
                server.url,
                cwd=work,
                env=workflow_env(tmp_path),
            )
        )
    assert sorted(r["path"] for r in server.requests) == ["/url1", "/url2", "/url3", "/url4"]
    assert peak[0] == 2
    assert "parallel_process: 4/4 processed, 0 failed (100%)" in out
    assert "'body': {'path': '/url1'}" in out


def test_example_api_requests(tmp_path: Path, work: Path) -> None:
    """The bearer token comes from env.API_TOKEN; a 503 is retried (delay 1 s)."""
    failed_once: set[str] = set()

    def respond(method: str, path: str, headers: dict, body: bytes) -> tuple[int, Any]:
        if headers.get("Authorization") != "Bearer s3cret":
            return 401, {"error": "bad token"}
        user = path.rsplit("/", 1)[-1]
        if user == "user2" and user not in failed_once:
            failed_once.add(user)
            return 503, {"error": "try again"}
        return 200, {"id": user, "name": user.upper()}

    with LocalHTTPServer(respond) as server:
        env = workflow_env(tmp_path, API_TOKEN="s3cret")
        out = _ok(
            run_cli(
                "run",
                str(EXAMPLE / "api_requests.yaml"),
                "--http-rewrite",
                f"https://api.example.com={server.url}",
                cwd=work,
                env=env,
            )
        )
        assert [r["path"] for r in server.requests].count("/users/user2") == 2
        # Without the token, nothing is requested: the run does not start.
        del env["API_TOKEN"]
        before = len(server.requests)
        proc = run_cli("run", str(EXAMPLE / "api_requests.yaml"), cwd=work, env=env)
        assert len(server.requests) == before
    assert "(outputs: user_data)" in out
    items = items_of(status_json(run_id_of(out), work, workflow_env(tmp_path)), "fetch_data")
    assert [i["attempts"] for i in items] == [1, 2, 1]
    assert "'body': {'id': 'user3', 'name': 'USER3'}" in items[2]["result"]
    assert proc.returncode == 1
    assert "api_requests.yaml:" in proc.stderr and "step 'fetch_data'" in proc.stderr
    assert "env.API_TOKEN" in proc.stderr and "not set" in proc.stderr


def _records_file(work: Path, count: int, per_batch: int) -> Path:
    """input_records: a list of record batches (the example's task transforms a batch)."""
    records = [{"id": i, "name": f"user{i}", "score": str(80 + (i * 7) % 20)} for i in range(count)]
    batches = [records[i : i + per_batch] for i in range(0, count, per_batch)]
    return _write(work / "records.json", json.dumps(batches))


def test_example_data_transformation(tmp_path: Path, work: Path) -> None:
    path = _records_file(work, 10, 4)
    env = workflow_env(tmp_path)
    out = _ok(
        run_cli(
            "run",
            str(EXAMPLE / "data_transformation.yaml"),
            "-p",
            f"input_records=@{path}",
            cwd=work,
            env=env,
        )
    )
    assert "transform_records: 3/3 processed" in out
    assert "'id': 0, 'name': 'USER0', 'score': 80.0, 'grade': 'B'" in out
    assert "'id': 2, 'name': 'USER2', 'score': 94.0, 'grade': 'A'" in out
    # Without the param, the run is refused before it starts, naming the name.
    proc = run_cli("run", str(EXAMPLE / "data_transformation.yaml"), cwd=work, env=env)
    assert proc.returncode == 1
    assert "data_transformation.yaml:5: step 'transform_records': field 'items'" in proc.stderr
    assert "undefined template name 'input_records'" in proc.stderr


# -- crash and resume -----------------------------------------------------------------------

CRASH_WORKFLOW = """
steps:
  - name: append
    task: batch
    inputs:
      items: "{{ range(200) | list }}"
      batch_size: 10
      parallel: true
      max_parallel: 4
      task:
        type: python
        code: |
          import time
          with open(params['log'], 'a') as log:
              log.write(f"{item}\\n")
          time.sleep(0.05)
          result = item * 2
"""


def _count(log: Path) -> int:
    return len(log.read_text().split()) if log.exists() else 0


def _kill_midway(
    file: Path, log: Path, work: Path, env: dict[str, str], *extra: str
) -> tuple[str, dict[str, set[int]]]:
    """Start `sitq workflow run`, SIGKILL it once half the items are in the log, and
    return the run id and the items' states as recorded at the kill."""
    out_path = work / "run.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            workflow_cmd("run", str(file), "-p", f"log={log}", *extra),
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: _count(log) >= 100 or proc.poll() is not None,
            timeout=60,
            what="half the items to run",
        )
        assert proc.poll() is None, f"the run ended before the kill:\n{out_path.read_text()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(CLI_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(CLI_TIMEOUT)
    run_id = run_id_of(out_path.read_text())
    status = status_json(run_id, work, env)
    assert status["run"]["status"] == "running" and status["run"]["process_alive"] is False
    states: dict[str, set[int]] = {"succeeded": set(), "running": set(), "pending": set()}
    no_task = set()
    for item in items_of(status, "append"):
        states[item["status"]].add(item["index"])
        if item["status"] == "running" and item["task_id"] is None:
            no_task.add(item["index"])
    states["running_without_task"] = no_task
    return run_id, states


def _check_resumed(log: Path, states: dict[str, set[int]], in_flight: set[int]) -> Counter:
    seen = Counter(int(line) for line in log.read_text().split())
    assert set(seen) == set(range(200)), "every item ran"
    twice = {item for item, n in seen.items() if n > 1}
    assert max(seen.values()) <= 2
    assert twice <= in_flight, (
        f"only items in flight at the kill ran twice, not {twice - in_flight}"
    )
    for item in states["succeeded"] | states["pending"]:
        assert seen[item] == 1
    return seen


def test_crash_and_resume_in_process(tmp_path: Path, work: Path, db_url: str) -> None:
    """SIGKILL `sitq workflow run` half way; --resume finishes without redoing finished
    items. The state is in the sitq database: an SQLite file, or PostgreSQL."""
    file = _write(work / "crash.yaml", CRASH_WORKFLOW)
    log = work / "log.txt"
    env = workflow_env(tmp_path, SITQ_DB=db_url)
    run_id, states = _kill_midway(file, log, work, env, "--executor", "local")
    assert 0 < len(states["succeeded"]) < 200
    assert len(states["running"]) <= 4  # max_parallel batches, one item each at a time

    out = _ok(run_cli("run", str(file), "--resume", run_id, cwd=work, env=env))
    assert f"resuming {run_id}" in out
    seen = _check_resumed(log, states, states["running"])
    assert sum(seen.values()) - 200 <= 4
    status = status_json(run_id, work, env)
    assert status["run"]["status"] == "succeeded"
    items = items_of(status, "append")
    assert all(i["status"] == "succeeded" and i["attempts"] == 1 for i in items)
    assert [i["result"] for i in items] == [repr(2 * n) for n in range(200)]


def test_crash_and_resume_on_workers(
    tmp_path: Path, work: Path, db_url: str, spawn_worker: Callable[..., Any]
) -> None:
    """With live workers the items are tasks: a resume waits for the tasks the killed
    run had enqueued instead of running them again (tasks and run state in one database)."""
    asyncio.run(_create_db(db_url))
    worker = spawn_worker("--concurrency", "4", db=db_url).wait_started()
    file = _write(work / "crash.yaml", CRASH_WORKFLOW)
    log = work / "log.txt"
    env = workflow_env(tmp_path, SITQ_DB=db_url)
    run_id, states = _kill_midway(file, log, work, env)
    assert 0 < len(states["succeeded"]) < 200

    out = _ok(run_cli("run", str(file), "--resume", run_id, cwd=work, env=env))
    assert "(items run on sitq workers)" in out
    _check_resumed(log, states, states["running_without_task"])
    items = items_of(status_json(run_id, work, env), "append")
    assert all(i["status"] == "succeeded" and i["ran_on"] == "workers" for i in items)
    assert worker.process.poll() is None


async def _create_db(path: Path | str) -> None:
    async with TaskQueue(path):
        pass


async def _recorded(db: str, run_id: str) -> tuple[Any, list[Any], list[Any]]:
    """The run, its steps and its first step's items, read back through TaskQueue."""
    async with TaskQueue(db) as queue:
        run = await WorkflowStore.of(queue).get_workflow_run(run_id)
        steps = await WorkflowStore.of(queue).list_workflow_steps(run_id)
        items = await WorkflowStore.of(queue).list_workflow_items(
            run_id, steps[0].name, with_results=True
        )
    return run, steps, items


async def test_run_state_lives_in_the_sitq_database(
    tmp_path: Path, work: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run, its steps and items are rows of the sitq database the tasks live in
    (no state file), readable by any process through TaskQueue: on both backends."""
    monkeypatch.chdir(work)
    workflow, params = _errors_workflow(work, continue_on_error=True)
    report = await workflow.run_async({**params, "bad": [4]}, db=db_url, executor="local")
    assert report.status == "partial"
    run, steps, items = await _recorded(db_url, report.run_id)
    assert run.status == "partial" and run.source == "errors.yaml" and run.finished_at
    assert [(s.name, s.status, s.total) for s in steps] == [("process", "partial", 10)]
    assert [i.status for i in items] == ["failed" if n == 4 else "succeeded" for n in range(10)]
    assert items[4].error == "ValueError: item 4 is bad" and items[4].attempts == 1
    assert all(i.ran_on == "local" and i.attempts == 1 for i in items)
    assert items[3].result_preview == "3" and items[3].result is not None
    assert not (work / ".sitq").exists() and not (work / "sitq.db").exists()

    (work / "flag").unlink()  # --resume redoes only the failed item, in the same database
    resumed = await workflow.run_async(resume=report.run_id, db=db_url, executor="local")
    assert resumed.ok and _lines(work / "log.txt").count("4") == 2
    run, _, items = await _recorded(db_url, report.run_id)
    assert run.status == "succeeded" and all(i.status == "succeeded" for i in items)


def test_status_needs_an_existing_database(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    out = CliRunner().invoke(workflow_group, ["status", "--db", str(missing)])
    assert out.exit_code == 1 and f"no sitq database at {missing}" in out.output
    assert not missing.exists()


# -- errors, retries, on_item_error ------------------------------------------------------

ERRORS_WORKFLOW = """
params:
  continue: false
steps:
  - name: process
    task: batch
    inputs:
      items: "{{ range(10) | list }}"
      batch_size: 3
      continue_on_error: CONTINUE
      on_item_error:
        type: python
        code: |
          import json
          with open(params['handled'], 'a') as out:
              out.write(json.dumps({'item': item, 'error': error}) + "\\n")
      task:
        type: python
        code: |
          import os
          with open(params['log'], 'a') as log:
              log.write(f"{item}\\n")
          if item in params['bad'] and os.path.exists(params['flag']):
              raise ValueError(f"item {item} is bad")
          return item
"""


def _errors_workflow(work: Path, continue_on_error: bool) -> tuple[Workflow, dict[str, Any]]:
    text = ERRORS_WORKFLOW.replace("CONTINUE", "true" if continue_on_error else "false")
    flag = _write(work / "flag", "")
    params = {
        "log": str(work / "log.txt"),
        "handled": str(work / "handled.jsonl"),
        "flag": str(flag),
    }
    return Workflow.from_string(text, "errors.yaml"), params


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_continue_on_error_false_stops_at_first_failure_and_resume_redoes_the_rest(
    tmp_path: Path, work: Path
) -> None:
    workflow, params = _errors_workflow(work, continue_on_error=False)
    options = {"db": tmp_path / "state.db", "executor": "local"}
    report = workflow.run({**params, "bad": [3]}, **options)
    assert report.status == "failed" and not report.ok
    assert "1 of 10 items failed; first, item 3: ValueError: item 3 is bad" in report.error
    assert _lines(work / "log.txt") == ["0", "1", "2", "3"]  # nothing after the failure
    assert [f["index"] for f in report.failures] == [3]
    handled = [json.loads(line) for line in (work / "handled.jsonl").read_text().splitlines()]
    assert handled == [{"item": 3, "error": "ValueError: item 3 is bad"}]

    (work / "flag").unlink()  # the cause is fixed
    resumed = workflow.run(resume=report.run_id, **options)
    assert resumed.ok
    assert resumed.steps["process"].result == list(range(10))
    # Items 0-2 succeeded before: not redone. 3 failed and 4-9 never ran: run now.
    assert _lines(work / "log.txt") == [str(n) for n in [0, 1, 2, 3, *range(3, 10)]]


def test_continue_on_error_true_finishes_and_reports_failures(tmp_path: Path, work: Path) -> None:
    workflow, params = _errors_workflow(work, continue_on_error=True)
    report = workflow.run({**params, "bad": [2, 5]}, db=tmp_path / "state.db", executor="local")
    assert report.status == "partial"
    assert sorted(_lines(work / "log.txt"), key=int) == [str(n) for n in range(10)]
    assert [(f["index"], f["item"], f["error"]) for f in report.failures] == [
        (2, 2, "ValueError: item 2 is bad"),
        (5, 5, "ValueError: item 5 is bad"),
    ]
    assert report.steps["process"].result == [0, 1, None, 3, 4, None, 6, 7, 8, 9]
    handled = [json.loads(line) for line in (work / "handled.jsonl").read_text().splitlines()]
    assert sorted(h["item"] for h in handled) == [2, 5]  # once per failed item
    assert all(h["error"] == f"ValueError: item {h['item']} is bad" for h in handled)


RETRY_WORKFLOW = """
steps:
  flaky:
    type: python
    retry: {max_attempts: ATTEMPTS, delay: 0.01, backoff: 2}
    code: |
      import os, pathlib
      counter = pathlib.Path(params['counter'])
      n = int(counter.read_text()) + 1 if counter.exists() else 1
      counter.write_text(str(n))
      if n < 3:
          raise RuntimeError(f"attempt {n} fails")
      result = {"attempt": n, "pid": os.getpid()}
"""


@pytest.mark.parametrize("where", ["local", "workers"])
def test_item_succeeding_on_third_attempt_records_three_attempts(
    tmp_path: Path, work: Path, db_path: Path, spawn_worker: Callable[..., Any], where: str
) -> None:
    worker = None
    if where == "workers":
        asyncio.run(_create_db(db_path))
        worker = spawn_worker("--concurrency", "2").wait_started()
    workflow = Workflow.from_string(RETRY_WORKFLOW.replace("ATTEMPTS", "3"), "retry.yaml")
    report = workflow.run({"counter": str(work / "counter")}, db=str(db_path), executor=where)
    assert report.ok and report.executor == where
    result = report.steps["flaky"].result
    assert result["attempt"] == 3
    assert result["pid"] == (worker.pid if worker else os.getpid())
    out = CliRunner().invoke(workflow_group, ["status", report.run_id, "--db", str(db_path)])
    assert "step flaky: succeeded, 1/1 processed, 0 failed (100%)" in out.output
    assert "[0]: succeeded, 3 attempt(s)" in out.output

    (work / "counter").unlink()
    two = Workflow.from_string(RETRY_WORKFLOW.replace("ATTEMPTS", "2"), "retry.yaml")
    failed = two.run({"counter": str(work / "counter")}, db=str(db_path), executor="local")
    assert failed.status == "failed"
    assert failed.error == "step 'flaky' failed: RuntimeError: attempt 2 fails"
    out = CliRunner().invoke(workflow_group, ["status", failed.run_id, "--db", str(db_path)])
    assert "[0]: failed, 2 attempt(s): RuntimeError: attempt 2 fails" in out.output


# -- where items run ---------------------------------------------------------------------

PIDS_WORKFLOW = """
steps:
  pids:
    type: python
    for_each: [1, 2, 3, 4, 5, 6]
    max_parallel: 3
    code: |
      import os
      result = [item, os.getpid()]
"""


def test_items_run_on_live_workers_and_in_process_without(
    tmp_path: Path, work: Path, db_path: Path, spawn_worker: Callable[..., Any]
) -> None:
    workflow = Workflow.from_string(PIDS_WORKFLOW, "pids.yaml")
    # No workers: in this process (the database is created to record the run).
    alone = workflow.run(db=str(db_path))
    assert alone.executor == "local" and db_path.exists()
    assert alone.steps["pids"].result == [[n, os.getpid()] for n in range(1, 7)]

    first = spawn_worker("--concurrency", "2").wait_started()
    second = spawn_worker("--concurrency", "2").wait_started()
    spread = workflow.run(db=str(db_path))
    assert spread.executor == "workers"
    pids = [pid for _, pid in spread.steps["pids"].result]
    assert [n for n, _ in spread.steps["pids"].result] == list(range(1, 7))
    assert set(pids) <= {first.pid, second.pid}


# -- http_request, shell, templates ------------------------------------------------------


def test_http_request_sends_method_headers_and_json_body(tmp_path: Path, work: Path) -> None:
    def respond(method: str, path: str, headers: dict, body: bytes) -> tuple[int, Any]:
        if path == "/missing":
            return 404, {"error": "no such thing"}
        return 201, {"got": json.loads(body), "method": method}

    text = """
steps:
  - name: post
    type: http_request
    url: "{{ params.base }}/items"
    method: POST
    headers: {X-Run: "{{ params.tag }}"}
    body: {name: "{{ params.tag }}", count: 3}
  - name: missing
    type: http_request
    url: "{{ params.base }}/missing"
"""
    with LocalHTTPServer(respond) as server:
        report = Workflow.from_string(text, "http.yaml").run(
            {"base": server.url, "tag": "t1"}, db=tmp_path / "state.db"
        )
    request = server.requests[0]
    assert request["method"] == "POST" and request["headers"]["X-Run"] == "t1"
    assert request["headers"]["Content-Type"] == "application/json"
    post = report.steps["post"].result
    assert post["status"] == 201
    assert post["body"] == {"got": {"name": "t1", "count": 3}, "method": "POST"}
    assert report.status == "failed"
    assert report.error.startswith("step 'missing' failed: HTTP 404 Not Found from GET ")
    assert '{"error": "no such thing"}' in report.error


def test_templates_feed_lists_between_steps_and_command_items(tmp_path: Path, work: Path) -> None:
    text = """
params:
  greeting: hello
steps:
  - name: names
    type: shell
    command: "printf 'ann\\nbob\\n'"
  - name: listed
    task: batch
    inputs:
      items: $(printf 'x y\\nz\\n\\n')
      task: {type: echo, message: "{{ index }}:{{ item }}"}
    outputs: listed_items
  - name: greet
    type: shell
    for_each: "{{ steps.names.result.split() }}"
    command: >-
      echo {{ greeting }} {{ item | quote }} from {{ env.WF_USER }}
      {{ listed_items | length }}
"""
    os.environ["WF_USER"] = "tester"
    try:
        report = Workflow.from_string(text, "t.yaml").run(db=tmp_path / "state.db")
    finally:
        del os.environ["WF_USER"]
    assert report.ok, report.error
    assert report.outputs["listed_items"] == ["0:x y", "1:z"]
    assert report.steps["greet"].result == ["hello ann from tester 2", "hello bob from tester 2"]


def test_runtime_template_error_names_step_and_field(tmp_path: Path) -> None:
    text = """
steps:
  show:
    type: shell
    for_each: [{a: 1}, {b: 2}]
    continue_on_error: true
    command: "echo {{ item.a }}"
"""
    report = Workflow.from_string(text, "t.yaml").run(db=tmp_path / "state.db")
    assert report.status == "partial"
    assert report.steps["show"].result == ["1", None]
    (failure,) = report.failures
    assert failure["error"].startswith("step 'show', field 'command': undefined name in template")
    assert "has no attribute 'a'" in failure["error"]


# -- validation --------------------------------------------------------------------------

BAD_WORKFLOWS = [
    ("steps:\n  a:\n    type: shell\n    comand: echo hi\n",
     "wf.yaml:4: step 'a': unknown key 'comand' for a shell step; did you mean 'command'?"),
    ("steps:\n  a:\n    type: shel\n    command: echo\n",
     "wf.yaml:3: step 'a': unknown step kind 'shel'; did you mean 'shell'?"),
    ("steps:\n  - name: b\n    task: batch\n    inputs:\n      items: [1]\n      batch_size: ten\n"
     "      task: {type: echo, message: hi}\n",
     "wf.yaml:6: step 'b': batch_size must be a whole number >= 1, not 'ten'"),
    ("steps:\n  a:\n    type: echo\n    for_each: 5\n    message: hi\n",
     "wf.yaml:4: step 'a': for_each must be a list, or a template that gives one"),
    ("steps:\n  a:\n    type: echo\n    message: '{{ nme }}'\n",
     "wf.yaml:4: step 'a': field 'message': undefined template name 'nme'"),
    ("steps:\n  a:\n    type: echo\n    message: '{{ steps.b.result }}'\n  b:\n    type: echo\n"
     "    message: hi\n",
     "wf.yaml:4: step 'a': field 'message': refers to steps.b, which runs later"),
    ("steps:\n  a:\n    type: echo\n    message: '{{ steps.c.result }}'\n",
     "wf.yaml:4: step 'a': field 'message': refers to steps.c, but there is no step 'c'"),
    ("steps:\n  a:\n    type: echo\n    message: '{{ item }}'\n",
     "wf.yaml:4: step 'a': field 'message': uses 'item', which is only defined in for_each"),
    ("steps:\n  a:\n    type: python\n    code: |\n      x = 1\n      y = (\n",
     "wf.yaml:6: step 'a': python syntax error"),
    ("steps:\n  a:\n    type: python\n    code: \"return (1\"\n",
     "wf.yaml:4: step 'a': python syntax error"),
    ("steps:\n  a:\n    name: x\n    taks: python\n    code: 'x = 1'\n",
     "wf.yaml:4: step 'a': no step kind: add `type:` (one of "),
    ("steps:\n  a:\n    taks: python\n",
     "or `task: batch` (key 'taks': did you mean 'task'?)"),
    ("steps:\n  a:\n    type:\n    taks: python\n",
     "or `task: batch` (key 'taks': did you mean 'task'?)"),
    ("steps:\n  a:\n    type: echo\n    message: hi\n  a:\n    type: echo\n    message: again\n",
     "wf.yaml:5: invalid YAML: key 'a' is given twice in this mapping (first on line 2)"),
    ("steps:\n  a:\n    type: echo\n    message: hi\n    retry: {max_attempts: 0}\n",
     "wf.yaml:5: step 'a': retry.max_attempts must be a whole number >= 1"),
    ("stepz: {}\n", "wf.yaml:1: unknown top-level key 'stepz'; did you mean 'steps'?"),
    ("steps:\n  a:\n    type: python\n    code: |\n      x = steps['b']['result']\n",
     "wf.yaml:5: step 'a': code uses steps['b'], but no step has that name"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), BAD_WORKFLOWS)
def test_validation_names_file_line_and_step(text: str, expected: str) -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        Workflow.from_string(text, "wf.yaml").validate({})
    assert expected in str(caught.value)


def test_a_step_kind_left_empty_is_not_offered_as_its_own_spelling() -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        Workflow.from_string("steps:\n  a:\n    type:\n", "wf.yaml").validate({})
    assert "no step kind" in str(caught.value) and "did you mean" not in str(caught.value)


def test_nothing_runs_when_validation_fails(tmp_path: Path, work: Path) -> None:
    file = _write(
        work / "wf.yaml",
        "steps:\n  first:\n    type: shell\n    command: touch ran\n"
        "  second:\n    type: echo\n    message: '{{ missing_param }}'\n",
    )
    db = str(tmp_path / "s.db")
    result = CliRunner().invoke(workflow_group, ["run", str(file), "--db", db])
    assert result.exit_code == 1
    assert "wf.yaml:7: step 'second': field 'message'" in result.output
    assert not (work / "ran").exists() and not Path("ran").exists()
    assert not Path(db).exists()  # checked before the database is even opened
    listing = CliRunner().invoke(workflow_group, ["status", "--db", db])
    assert listing.exit_code == 1 and f"no sitq database at {db}" in listing.output


def test_bare_templates_are_quoted_but_block_scalars_are_not() -> None:
    text = "a: {{ x }}\nb:\n  - {{ y }}  # c\ncode: |\n  k: {{ z }}\nd: '{{ q }}'\n"
    quoted = quote_bare_templates(text)
    assert quoted.splitlines() == [
        "a: '{{ x }}'",
        "b:",
        "  - '{{ y }}'  # c",
        "code: |",
        "  k: {{ z }}",
        "d: '{{ q }}'",
    ]


# -- the Python face and the CLI ---------------------------------------------------------


async def test_run_async_and_progress(tmp_path: Path) -> None:
    seen = []
    workflow = Workflow.from_string(PIDS_WORKFLOW, "pids.yaml")
    report = await workflow.run_async(
        db=tmp_path / "state.db", executor="local", on_progress=seen.append
    )
    assert report.ok
    assert [(p.processed, p.total) for p in seen][-1] == (6, 6)
    assert seen[-1].percent == 100.0 and seen[-1].failed == 0
    with pytest.raises(Exception, match="inside a running event loop"):
        workflow.run(db=tmp_path / "state.db")


def test_cli_run_with_params_from_a_csv_file_and_status(tmp_path: Path, work: Path) -> None:
    rows = _write(work / "rows.csv", "name,score\nann,3\nbob,4\n")
    file = _write(
        work / "wf.yaml",
        "steps:\n  total:\n    type: python\n    outputs: total\n    code: |\n"
        "      return sum(int(r['score']) for r in params['rows']) * params['factor']\n",
    )
    db = str(tmp_path / "state.db")
    result = CliRunner().invoke(
        workflow_group,
        ["run", str(file), "-p", f"rows=@{rows}", "-p", "factor=10", "--db", db],
    )
    assert result.exit_code == 0, result.output
    assert "total: 1/1 processed, 0 failed (100%)" in result.output
    assert "result of total (outputs: total): 70" in result.output
    run_id = run_id_of(result.output)
    shown = CliRunner().invoke(workflow_group, ["status", run_id, "--db", db])
    assert f"run {run_id}: succeeded" in shown.output
    assert "step total: succeeded, 1/1 processed" in shown.output
    listing = CliRunner().invoke(workflow_group, ["status", "--db", db])
    assert run_id in listing.output
    again = CliRunner().invoke(workflow_group, ["run", str(file), "--resume", run_id, "--db", db])
    assert "total: done in an earlier attempt, not run again" in again.output
    unknown = CliRunner().invoke(workflow_group, ["status", "nope", "--db", db])
    assert unknown.exit_code == 1 and "no workflow run 'nope'" in unknown.output


# -- resuming: what a resume must redo ---------------------------------------------------

UNRENDERED_ITEMS_WORKFLOW = """
steps:
  - name: files
    task: batch
    inputs:
      items: $(cat {{ params.list }})
      task: {type: echo, message: "file {{ item }}"}
  - name: after
    type: python
    code: |
      return len(steps.files.result)
"""


def test_resume_renders_the_items_of_a_step_that_failed_before_it_had_any(
    tmp_path: Path, work: Path
) -> None:
    listing = work / "list.txt"
    workflow = Workflow.from_string(UNRENDERED_ITEMS_WORKFLOW, "items.yaml")
    options = {"db": tmp_path / "state.db", "executor": "local"}
    report = workflow.run({"list": str(listing)}, **options)
    assert report.status == "failed" and "items command" in report.error

    listing.write_text("a\nb\nc\n")  # the cause is fixed
    resumed = workflow.run(resume=report.run_id, **options)
    assert resumed.steps["files"].result == ["file a", "file b", "file c"]
    assert resumed.ok, resumed.error
    assert resumed.steps["after"].result == 3


ADOPT_WORKFLOW = """
steps:
  - name: append
    for_each: [0, 1, 2]
    type: python
    code: |
      with open(params['log'], 'a') as log:
          log.write(f"{item}\\n")
      result = item * 10
"""


async def test_resume_without_workers_adopts_the_tasks_a_killed_run_enqueued(
    tmp_path: Path, work: Path
) -> None:
    """A killed run had enqueued item 0 (its task succeeded since) and item 1 (still
    queued); item 2 never started. Resumed without workers: 0 keeps its task's result,
    1's task is cancelled and the item runs here, 2 runs here."""
    from sitq import TaskStatus, Worker
    from sitq.workflow.kinds import AttrDict, ItemCall, run_item
    from sitq.workflow.state import StateStore

    db = str(tmp_path / "state.db")
    workflow = Workflow.from_string(ADOPT_WORKFLOW, "adopt.yaml")
    params = {"log": str(work / "log.txt")}
    code = workflow.spec.steps[0].item_task.code

    def call(index: int) -> ItemCall:
        namespace = {"params": AttrDict(params), "steps": {}, "item": index, "index": index}
        return ItemCall(step="append", index=index, kind="python", fields={}, code=code,
                        namespace={**namespace, "error": None})  # fmt: skip

    async with TaskQueue(db) as queue:
        store = StateStore(queue)
        await store.create_run("killed", "adopt.yaml", None, workflow.spec.text, params)
        await store.begin_step("killed", "append", 0, [0, 1, 2], True)
        done = await queue.enqueue(run_item, call(0))
        assert (await Worker(db, burst=True).run()) is None
        assert (await queue.get_result(done, timeout=0)).ok
        queued = await queue.enqueue(run_item, call(1))
        for index, task_id in ((0, done), (1, queued)):
            await store.item_started("killed", "append", index, "workers")
            await store.item_submitted("killed", "append", index, task_id)
        await store.finish_run("killed", "interrupted", "killed")

        report = await workflow.run_async(resume="killed", db=db, executor="local")
        assert report.ok, report.error
        assert report.steps["append"].result == [0, 10, 20]
        assert sorted(_lines(work / "log.txt")) == ["0", "1", "2"]  # each ran once
        assert await queue.status(queued) == TaskStatus.CANCELLED


DEPENDENT_WORKFLOW = """
steps:
  - name: process
    for_each: [1, 2, 3]
    continue_on_error: true
    outputs: processed
    type: python
    code: |
      import os
      if item == 2 and os.path.exists(params['flag']):
          raise ValueError("item 2 is bad")
      return item
  - name: doubled
    for_each: "{{ processed }}"
    type: python
    code: |
      return None if item is None else item * 2
  - name: total
    type: python
    code: |
      return sum(v for v in steps.doubled.result if v is not None)
  - name: unrelated
    type: shell
    command: "echo once >> {{ params.log }}"
"""


def test_resume_that_redoes_items_runs_again_the_later_steps_that_use_them(
    tmp_path: Path, work: Path
) -> None:
    flag = _write(work / "flag", "")
    log = work / "log.txt"
    workflow = Workflow.from_string(DEPENDENT_WORKFLOW, "dependent.yaml")
    options = {"db": tmp_path / "state.db", "executor": "local"}
    report = workflow.run({"flag": str(flag), "log": str(log)}, **options)
    assert report.status == "partial"
    assert report.steps["doubled"].result == [2, None, 6]
    assert report.steps["total"].result == 8

    flag.unlink()  # the cause is fixed: item 2 is redone, and what was built on it
    resumed = workflow.run(resume=report.run_id, **options)
    assert resumed.ok, resumed.error
    assert resumed.steps["process"].result == [1, 2, 3]
    assert resumed.steps["doubled"].result == [2, 4, 6]  # items rendered again
    assert resumed.steps["total"].result == 12  # through doubled
    assert resumed.steps["unrelated"].skipped and _lines(log) == ["once"]


def test_step_dependencies_name_the_steps_a_step_uses() -> None:
    from sitq.workflow.spec import step_dependencies

    text = """
steps:
  a: {type: echo, message: hi, outputs: a_out}
  b: {type: echo, message: "{{ a_out }}"}
  c: {type: python, code: "return steps['b']['result']"}
  d: {type: python, code: "return [s for s in steps]"}
  e: {type: echo, message: "{% for s in steps %}{{ s }}{% endfor %}"}
  f: {type: echo, message: "{{ params.x }}"}
"""
    deps = step_dependencies(Workflow.from_string(text, "d.yaml").spec)
    assert deps == {
        "a": frozenset(),
        "b": {"a"},
        "c": {"b"},
        "d": {"a", "b", "c"},
        "e": {"a", "b", "c", "d"},
        "f": frozenset(),
    }


async def test_a_run_another_host_still_runs_is_resumed_only_with_force(
    tmp_path: Path, work: Path
) -> None:
    from sitq.workflow.errors import WorkflowError
    from sitq.workflow.state import StateStore

    db = str(tmp_path / "state.db")
    workflow = Workflow.from_string("steps:\n  a: {type: echo, message: hi}\n", "lease.yaml")
    async with TaskQueue(db) as queue:
        await StateStore(queue).create_run("elsewhere", "lease.yaml", None, workflow.spec.text, {})
        # Its process runs on another host (its liveness cannot be checked here),
        # and its lease is fresh.
        await WorkflowStore.of(queue).update_workflow_run(
            "elsewhere", "running", host="other-host", pid=1
        )
        with pytest.raises(WorkflowError, match="still running .*other-host.*--force"):
            await workflow.run_async(resume="elsewhere", db=db, executor="local")
        assert (await WorkflowStore.of(queue).get_workflow_run("elsewhere")).host == "other-host"
        report = await workflow.run_async(resume="elsewhere", db=db, executor="local", force=True)
        assert report.ok
        assert (await WorkflowStore.of(queue).get_workflow_run("elsewhere")).status == "succeeded"


HEARTBEAT_WORKFLOW = """
steps:
  wait_for_heartbeat:
    type: python
    code: |
      import sqlite3, time
      deadline = time.monotonic() + 60
      while True:
          with sqlite3.connect(params['db']) as conn:
              created, updated = conn.execute(
                  "SELECT created_at, updated_at FROM sitq_workflow_runs").fetchone()
          if updated > created:
              break
          if time.monotonic() > deadline:
              raise TimeoutError("the run's lease was never renewed")
          time.sleep(0.01)
"""


async def test_a_running_run_renews_its_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sitq.workflow import state

    monkeypatch.setattr(state, "HEARTBEAT_INTERVAL", 0.05)
    db = str(tmp_path / "state.db")
    workflow = Workflow.from_string(HEARTBEAT_WORKFLOW, "beat.yaml")
    report = await workflow.run_async({"db": db}, db=db, executor="local")
    assert report.ok, report.error


PAYLOAD_WORKFLOW = """
steps:
  - name: first
    type: echo
    message: "{{ params.small }}"
  - name: named
    type: python
    for_each: [1, 2, 3]
    code: |
      return f"{params.small}-{params['other']}-{steps.first.result}-{item}"
  - name: dynamic
    type: python
    code: |
      return sorted(params) + sorted(steps)
"""


def test_an_item_task_carries_only_the_params_and_steps_its_code_reads(
    tmp_path: Path, db_path: Path, spawn_worker: Callable[..., Any]
) -> None:
    import sqlite3

    asyncio.run(_create_db(db_path))
    spawn_worker("--concurrency", "2").wait_started()
    params = {"small": "s", "other": "o", "big": "x" * 200_000}
    report = Workflow.from_string(PAYLOAD_WORKFLOW, "payload.yaml").run(params, db=str(db_path))
    assert report.ok and report.executor == "workers", report.error
    assert report.steps["named"].result == ["s-o-s-1", "s-o-s-2", "s-o-s-3"]
    # Code that uses params and steps as a whole still sees all of them.
    assert report.steps["dynamic"].result == ["big", "other", "small", "first", "named"]
    with sqlite3.connect(db_path) as conn:
        sizes = [n for (n,) in conn.execute("SELECT length(payload) FROM sitq_tasks")]
    assert len(sizes) == 4
    assert max(sorted(sizes)[:3]) < 5_000  # the three items of 'named'
    assert max(sizes) > 200_000  # the dynamic step's task has every param


SECRET_WORKFLOW = """
steps:
  - name: call
    type: shell
    continue_on_error: true
    command: "echo token $TOKEN_ECHO >&2; curl-nothing --token {{ env.WF_SECRET_TOKEN }}; exit 3"
    env: {TOKEN_ECHO: "{{ env.WF_SECRET_TOKEN }}"}
  - name: fetch
    type: http_request
    url: "{{ params.base }}/missing?key={{ env.WF_SECRET_TOKEN }}"
"""


def test_errors_quote_templates_and_never_the_secrets_they_render(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cr3t-t0ken-value"
    monkeypatch.setenv("WF_SECRET_TOKEN", secret)
    with LocalHTTPServer(lambda *_: (404, {"error": "nope"})) as server:
        report = Workflow.from_string(SECRET_WORKFLOW, "secret.yaml").run(
            {"base": server.url}, db=tmp_path / "state.db", executor="local"
        )
    assert report.status == "failed"
    shell, http = (f["error"] for f in report.failures)
    assert "command exited with status 3: echo token" in shell
    assert "{{ env.WF_SECRET_TOKEN }}" in shell and "token ***" in shell
    assert "HTTP 404" in http and "key={{ env.WF_SECRET_TOKEN }}" in http
    stored = CliRunner().invoke(
        workflow_group, ["status", report.run_id, "--db", str(tmp_path / "state.db")]
    )
    assert "exit 3" in stored.output
    assert secret not in stored.output + shell + http + str(report.error)


def _process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie is dead
    except FileNotFoundError:
        return True


def test_a_shell_timeout_kills_the_commands_children_too(tmp_path: Path, work: Path) -> None:
    pidfile = work / "child.pid"
    text = """
steps:
  slow:
    type: shell
    timeout: 0.5
    command: "sleep 300 & echo $! > {{ params.pidfile }}; wait"
"""
    report = Workflow.from_string(text, "slow.yaml").run(
        {"pidfile": str(pidfile)}, db=tmp_path / "state.db", executor="local"
    )
    assert report.status == "failed" and "command timed out after 0.5s" in report.error
    child = int(pidfile.read_text())
    wait_until(lambda: _process_gone(child), timeout=30, what="the timed-out command's child")


def test_a_missing_param_is_found_before_the_run_is_created(tmp_path: Path, work: Path) -> None:
    text = """
params:
  count: 3
steps:
  show:
    type: shell
    command: "echo {{ params.cout }} {{ params['count'] }} {{ params.label | default('-') }}"
"""
    workflow = Workflow.from_string(text, "wf.yaml")
    db = tmp_path / "state.db"
    with pytest.raises(WorkflowValidationError) as caught:
        workflow.run(db=db, executor="local")
    assert "wf.yaml:7: step 'show': field 'command': uses params.cout, but there is no param " \
        "'cout' (did you mean 'count'?" in str(caught.value)  # fmt: skip
    assert not db.exists()  # nothing was recorded
    report = workflow.run({"cout": "x"}, db=db, executor="local")
    assert report.ok and report.steps["show"].result == "x 3 -"


STRANDED_WORKFLOW = """
steps:
  - name: wait
    for_each: [0, 1]
    max_parallel: 2
    type: python
    code: |
      import os, time
      with open(params['log'], 'a') as log:
          log.write(f"start {item}\\n")
      deadline = time.monotonic() + 60
      while not os.path.exists(params['go']):
          if time.monotonic() > deadline:
              raise TimeoutError("the test never let the item finish")
          time.sleep(0.01)
      result = item * 10
"""


async def _until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait (without blocking the event loop) until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_items_whose_workers_all_died_fail_after_the_grace_period_and_a_resume_adopts_their_tasks(  # noqa: E501
    tmp_path: Path,
    work: Path,
    db_path: Path,
    spawn_worker: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The only worker on queue wq is SIGKILLed while it runs item 0 (item 1's task
    waits in the queue): once no live worker has served wq for the grace period,
    both items fail, saying how to go on; their tasks stay, and a resume with a
    worker again waits for those same tasks instead of enqueueing new ones."""
    monkeypatch.setenv("SITQ_WORKFLOW_NO_WORKER_GRACE", "1")
    caplog.set_level("WARNING", logger="sitq.workflow")
    log, go = work / "log.txt", work / "go"
    workflow = Workflow.from_string(STRANDED_WORKFLOW, "stranded.yaml")
    options: dict[str, Any] = {"db": db_path, "executor": "workers", "queue": "wq"}
    async with TaskQueue(db_path):
        pass  # the worker needs the database to exist
    first = spawn_worker("--queue", "wq", "--concurrency", "1", "--lease", "2").wait_started()

    running = asyncio.ensure_future(workflow.run_async({"log": str(log), "go": str(go)}, **options))
    await _until(lambda: log.exists() and "start 0" in log.read_text(), "item 0 to start")
    first.process.kill()
    first.process.wait(10)
    report = await asyncio.wait_for(running, 60)

    assert report.status == "failed"
    errors = [e["error"] for e in report.steps["wait"].errors]
    assert len(errors) == 2, errors
    for error in errors:
        assert "no live sitq worker served queue 'wq'" in error
        assert "sitq worker --queue wq" in error
        assert f"--resume {report.run_id}" in error
    assert "no live sitq worker serves queue 'wq'" in caplog.text
    async with TaskQueue(db_path) as queue:
        items = await WorkflowStore.of(queue).list_workflow_items(report.run_id, "wait")
        task_ids = [r.task_id for r in items]
        assert all(task_ids), items
        statuses = await queue.statuses(task_ids)
        # Held by the dead worker (item 0 ran, item 1 was prefetched) until their
        # leases expire, or queued: neither was cancelled.
        assert {statuses[t] for t in task_ids} <= {TaskStatus.RUNNING, TaskStatus.QUEUED}

        go.touch()
        spawn_worker("--queue", "wq", "--concurrency", "2").wait_started()
        resumed = await asyncio.wait_for(workflow.run_async(resume=report.run_id, **options), 60)
        assert resumed.ok, resumed.error
        assert resumed.steps["wait"].result == [0, 10]
        after = await WorkflowStore.of(queue).list_workflow_items(report.run_id, "wait")
        assert [r.task_id for r in after] == task_ids  # the same tasks, adopted
        assert sum((await queue.stats())["totals"].values()) == 2  # no task enqueued again
    # Only item 0, in flight at the kill, ran twice.
    assert Counter(log.read_text().splitlines()) == {"start 0": 2, "start 1": 1}


async def test_a_resume_here_waiting_for_a_dead_workers_task_fails_after_the_grace_period(
    tmp_path: Path, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed run's item task is held by a worker that is gone and no worker serves
    its queue: a resume in this process does not wait for it forever."""
    from sitq.workflow.kinds import AttrDict, ItemCall, run_item
    from sitq.workflow.state import StateStore

    monkeypatch.setenv("SITQ_WORKFLOW_NO_WORKER_GRACE", "0.5")
    db = str(tmp_path / "state.db")
    workflow = Workflow.from_string(ADOPT_WORKFLOW, "adopt.yaml")
    params = {"log": str(work / "log.txt")}
    namespace = {"params": AttrDict(params), "steps": {}, "item": 0, "index": 0, "error": None}
    call = ItemCall(step="append", index=0, kind="python", fields={},
                    code=workflow.spec.steps[0].item_task.code, namespace=namespace)  # fmt: skip
    async with TaskQueue(db) as queue:
        store = StateStore(queue)
        await store.create_run("killed", "adopt.yaml", None, workflow.spec.text, params)
        await store.begin_step("killed", "append", 0, [0, 1, 2], True)
        task_id = await queue.with_options(queue="wq").enqueue(run_item, call)
        # Claimed by a worker that never registered (as if killed long ago).
        assert len(await queue._backend.claim("gone-worker", ["wq"], 1, 3600)) == 1
        await store.item_started("killed", "append", 0, "workers")
        await store.item_submitted("killed", "append", 0, task_id)
        await store.finish_run("killed", "interrupted", "killed")

        report = await asyncio.wait_for(
            workflow.run_async(resume="killed", db=db, executor="local"), 60
        )
        assert report.status == "failed"
        [failure] = report.steps["append"].errors
        assert failure["index"] == 0
        assert "sitq worker --queue wq" in failure["error"]
        assert "--resume killed" in failure["error"]
        # Left for a worker: still held by the gone one (claimed, never started).
        record = (await queue._backend.get_tasks([task_id]))[task_id]
        assert (record.status, record.claimed) == ("queued", True)


def test_status_calls_a_run_on_another_host_interrupted_once_its_lease_expired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another host's process cannot be looked at: its run is interrupted once it has
    not renewed its lease (heartbeat) for RUN_LEASE seconds, not before."""
    from sitq.workflow.state import RUN_LEASE, StateStore

    db = str(tmp_path / "state.db")
    text = "steps:\n  a: {type: echo, message: hi}\n"

    async def heartbeat(age: float) -> None:
        """Record the run as running on another host, last heard of ``age`` s ago."""
        async with TaskQueue(db) as queue:
            if await WorkflowStore.of(queue).get_workflow_run("elsewhere") is None:
                await StateStore(queue).create_run("elsewhere", "lease.yaml", None, text, {})
                await WorkflowStore.of(queue).update_workflow_run(
                    "elsewhere", "running", host="other-host", pid=1
                )
            real_now = queue._backend.now
            with monkeypatch.context() as patch:
                patch.setattr(queue._backend, "now", lambda: real_now() - age)
                assert await WorkflowStore.of(queue).heartbeat_workflow_run(
                    "elsewhere", "other-host", 1
                )

    def status(*args: str) -> str:
        result = CliRunner().invoke(workflow_group, ["status", *args, "--db", db])
        assert result.exit_code == 0, result.output
        return result.output

    asyncio.run(heartbeat(RUN_LEASE - 20))  # within its lease: it may well run
    assert status("elsewhere").splitlines()[0] == "run elsewhere: running"
    run = json.loads(status("elsewhere", "--json"))["run"]
    assert run["status"] == "running" and run["interrupted"] is None
    assert run["process_alive"] is None  # not looked at: another host
    assert "interrupted" not in status()

    asyncio.run(heartbeat(RUN_LEASE + 60))  # no heartbeat for two minutes
    first = status("elsewhere").splitlines()[0]
    assert first.startswith("run elsewhere: interrupted (no heartbeat from process 1 on ")
    assert "other-host for 12" in first and "lease lasts 60s" in first and "--resume" in first
    assert json.loads(status("elsewhere", "--json"))["run"]["interrupted"].startswith(
        "no heartbeat"
    )
    assert "elsewhere  interrupted (no heartbeat" in status()
