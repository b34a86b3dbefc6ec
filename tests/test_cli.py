"""The `sitq` command, run as a real process."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jobs
import pytest
from support import SITQ, WorkerProcess, subprocess_env, wait_until

from sitq import SyncTaskQueue, TaskStatus
from sitq.backends.sqlite import schema as sqlite_schema


def sitq(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SITQ, *args],
        capture_output=True,
        text=True,
        env=env or subprocess_env(),
        cwd=cwd,
        timeout=60,
    )


@pytest.fixture
def filled_db(db_path: Path) -> dict[str, str]:
    """A database with one queued, one failed and one succeeded task."""
    with SyncTaskQueue(db_path) as queue:
        ids = {
            "queued": queue.with_options(queue="mail", delay=3600).enqueue(jobs.add, 1, 2),
            "failed": queue.enqueue(jobs.fail, "broken"),
            "ok": queue.enqueue(jobs.add, 2, 3),
        }
    with sqlite3.connect(db_path) as conn:  # finish two of them by hand, as a worker would
        conn.execute(
            "UPDATE sitq_tasks SET status='failed', attempts=1, error='ValueError: broken', "
            "traceback='Traceback (most recent call last):\nValueError: broken', finished_at=1 "
            "WHERE id=?",
            (ids["failed"],),
        )
    return ids


def test_status_shows_counts_and_workers(db_path: Path, filled_db: dict[str, str]) -> None:
    run = sitq("status", "--db", str(db_path))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split() == [
        "queue", "ready", "delayed", "running", "succeeded", "failed", "cancelled", "oldest",
        "wait",
    ]  # fmt: skip
    default, mail = lines[1].split(), lines[2].split()
    assert default[:7] == ["default", "1", "0", "0", "0", "1", "0"]
    assert default[7].endswith("s")  # the queued task is due: it has waited a moment
    assert mail == ["mail", "0", "1", "0", "0", "0", "0", "-"]  # delayed: not waiting yet
    assert "workers: 0 alive" in run.stdout
    assert "recent failures:" in run.stdout
    (failure,) = [line for line in lines if filled_db["failed"] in line]
    assert "jobs.fail [default]: ValueError: broken" in failure
    as_json = json.loads(sitq("status", "--db", str(db_path), "--json").stdout)
    assert as_json["queues"]["mail"]["queued"] == 1
    assert (as_json["queues"]["mail"]["ready"], as_json["queues"]["mail"]["delayed"]) == (0, 1)
    assert as_json["queues"]["mail"]["oldest_waiting_seconds"] is None
    assert as_json["queues"]["default"]["oldest_waiting_seconds"] >= 0
    assert [f["id"] for f in as_json["recent_failures"]] == [filled_db["failed"]]
    assert as_json["recent_failures"][0]["error"] == "ValueError: broken"


def test_status_shows_what_each_worker_runs(
    db_path: Path, tmp_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    started = tmp_path / "started"
    with SyncTaskQueue(db_path) as queue:
        task_id = queue.enqueue(jobs.wait_for_file, str(started), str(tmp_path / "never"), 60)
    worker = spawn_worker().wait_started()
    wait_until(started.exists, 30, "the task to start")
    report = json.loads(sitq("status", "--db", str(db_path), "--json").stdout)
    (row,) = [w for w in report["workers"] if w["pid"] == worker.pid]
    assert [t["id"] for t in row["running"]] == [task_id]
    assert row["running"][0]["task"] == "jobs.wait_for_file"
    text = sitq("status", "--db", str(db_path)).stdout
    assert f"running {task_id} jobs.wait_for_file (attempt 1" in text


def test_status_watch_refreshes_until_interrupted(db_path: Path, filled_db: dict[str, str]) -> None:
    # SIGINT's default restored first: a suite started in the background (or
    # under nohup) ignores it, and a child inherits that.
    restore = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    restore += "os.execv(sys.argv[1], sys.argv[1:])"
    command = [SITQ, "status", "--db", str(db_path), "--watch", "--interval", "0.2"]
    proc = subprocess.Popen(
        [sys.executable, "-c", restore, *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )
    assert proc.stdout is not None
    refreshes = 0
    while refreshes < 2:
        line = proc.stdout.readline().decode()
        assert line, "status --watch ended early"
        refreshes += "refreshed" in line
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0


def test_status_lists_a_live_worker(
    db_path: Path, filled_db: dict[str, str], spawn_worker: Callable[..., WorkerProcess]
) -> None:
    worker = spawn_worker("--concurrency", "3").wait_started()
    run = sitq("status", "--db", str(db_path))
    assert "workers: 1 alive" in run.stdout
    assert f"pid {worker.pid}" in run.stdout and "concurrency 3" in run.stdout


def test_db_from_environment(db_path: Path, filled_db: dict[str, str], tmp_path: Path) -> None:
    run = sitq("status", env=subprocess_env(SITQ_DB=str(db_path)), cwd=tmp_path)
    assert run.returncode == 0 and "mail" in run.stdout


def test_inspect_shows_call_error_and_traceback(db_path: Path, filled_db: dict[str, str]) -> None:
    run = sitq("inspect", "--db", str(db_path), "--show-args", filled_db["failed"])
    assert run.returncode == 0, run.stderr
    assert "call: jobs.fail('broken')" in run.stdout
    assert "status: failed" in run.stdout
    assert "ValueError: broken" in run.stdout and "Traceback" in run.stdout


def test_retry_cancel_and_purge(db_path: Path, filled_db: dict[str, str]) -> None:
    db = str(db_path)
    run = sitq("retry", "--db", db, filled_db["failed"])
    assert run.returncode == 0 and "queued 1 task(s) again" in run.stdout
    run = sitq("retry", "--db", db, filled_db["failed"])
    assert run.returncode == 1 and "is not failed or cancelled" in run.stderr
    run = sitq("cancel", "--db", db, filled_db["queued"])
    assert run.returncode == 0 and "cancelled" in run.stdout
    run = sitq("cancel", "--db", db, filled_db["queued"])
    assert run.returncode == 0 and f"task {filled_db['queued']} was already cancelled" in run.stdout
    run = sitq("retry", "--db", db, "--failed")
    assert run.returncode == 0 and "queued 0 task(s)" in run.stdout
    run = sitq("purge", "--db", db)
    assert run.returncode == 0 and "deleted 1 task(s)" in run.stdout
    with SyncTaskQueue(db_path) as queue:
        assert queue.status(filled_db["failed"]) is TaskStatus.QUEUED
        assert queue.stats()["totals"]["cancelled"] == 0


@pytest.mark.parametrize("command", ["inspect", "cancel", "retry"])
def test_unknown_task_id(db_path: Path, filled_db: dict[str, str], command: str) -> None:
    run = sitq(command, "--db", str(db_path), "no-such-id")
    assert run.returncode == 1
    assert "no task with id 'no-such-id'" in run.stderr


@pytest.mark.parametrize("where", ["missing.db", "no/such/dir/tasks.db"])
def test_missing_database_is_one_clear_line(tmp_path: Path, where: str) -> None:
    """A command that reads a database says it is not there, even when its
    directory is missing too (nothing is to be created, so no "cannot create")."""
    missing = tmp_path / where
    for command in (["status"], ["worker"], ["inspect", "x"], ["workflow", "status"]):
        run = sitq(*command, "--db", str(missing))
        assert run.returncode == 1
        assert run.stderr.strip().splitlines() == [
            f"Error: no sitq database at {missing}: check --db / $SITQ_DB, "
            f"or create it with `sitq init --db {missing}`"
        ]
    assert not missing.exists()


def test_init_creates_an_owner_only_database(tmp_path: Path) -> None:
    target = tmp_path / "new.db"
    run = sitq("init", "--db", str(target))
    assert run.returncode == 0 and target.stat().st_mode & 0o777 == 0o600


def test_non_sitq_database(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    other.write_text("hello")
    run = sitq("worker", "--db", str(other))
    assert run.returncode == 1 and "is not a sitq database" in run.stderr
    assert "Traceback" not in run.stderr


def test_incompatible_schema_on_the_command_line(db_path: Path, filled_db: dict[str, str]) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "UPDATE sitq_meta SET value=? WHERE key='schema_version'",
            (str(sqlite_schema.SCHEMA_VERSION + 1),),  # a version from a newer sitq
        )
    run = sitq("status", "--db", str(db_path))
    assert run.returncode == 1 and "upgrade sitq" in run.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--concurrency", "0"], "Invalid value for '--concurrency'"),
        (["--pool", "fork"], "Invalid value for '--pool'"),
        (["--bogus"], "No such option"),
    ],
)
def test_bad_worker_options(
    db_path: Path, filled_db: dict[str, str], args: list[str], message: str
) -> None:
    run = sitq("worker", "--db", str(db_path), *args)
    assert run.returncode == 2 and message in run.stderr


def test_module_that_will_not_import(
    db_path: Path, filled_db: dict[str, str], tmp_path: Path
) -> None:
    """A module that is found but fails while importing is shown where it failed
    (file:line and the error), not with the where-to-run hint, which is for a
    module that is not found, and names the command that runs."""
    (tmp_path / "broken_tasks.py").write_text("raise RuntimeError('import-time failure')\n")
    run = sitq("worker", "--db", str(db_path), "--import", "broken_tasks", cwd=tmp_path)
    assert run.returncode == 1
    assert run.stderr.strip() == (
        f"Error: cannot import module 'broken_tasks': {tmp_path / 'broken_tasks.py'}:1: "
        "RuntimeError: import-time failure"
    )
    (tmp_path / "broken_syntax.py").write_text("X = 1\ndef f(:\n    pass\n")
    for command in (["worker", "--db", str(db_path)], ["dashboard", "--db", str(db_path)]):
        run = sitq(*command, "--import", "broken_syntax", cwd=tmp_path)
        assert run.returncode == 1
        assert run.stderr.startswith(
            f"Error: cannot import module 'broken_syntax': {tmp_path / 'broken_syntax.py'}:2: "
            "SyntaxError: "
        ), run.stderr
        assert "can be found" not in run.stderr
    run = sitq("worker", "--db", str(db_path), "--import", "nope_nope", cwd=tmp_path)
    assert run.returncode == 1 and "No module named 'nope_nope'" in run.stderr
    assert "that `sitq worker` runs where the module can be found" in run.stderr
    run = sitq("dashboard", "--db", str(db_path), "--import", "nope_nope", cwd=tmp_path)
    assert "that `sitq dashboard` runs where the module can be found" in run.stderr


def test_worker_imports_modules_from_the_current_directory(
    db_path: Path, tmp_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "app_tasks.py").write_text("def triple(x):\n    return 3 * x\n")
    import sys

    sys.path.insert(0, str(app))
    try:
        import app_tasks  # type: ignore[import-not-found]

        with SyncTaskQueue(db_path) as queue:
            task_id = queue.enqueue(app_tasks.triple, 14)
            spawn_worker("--import", "app_tasks", cwd=app).wait_started()
            result = queue.get_result(task_id, timeout=20)
    finally:
        sys.path.remove(str(app))
        sys.modules.pop("app_tasks", None)
    assert result is not None and result.value == 42


def test_worker_check_passes_on_a_good_setup(db_path: Path, filled_db: dict[str, str]) -> None:
    run = sitq("worker", "--db", str(db_path), "--import", "jobs", "--check")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"ok: sqlite database {db_path}")
    assert "imports: jobs" in run.stdout and "unsigned payloads" in run.stdout
    env = subprocess_env(SITQ_SECRET_KEY="k" * 32)
    signed = sitq("worker", "--db", str(db_path), "--check", env=env)
    assert signed.returncode == 0 and "signed payloads" in signed.stdout
    assert "k" * 32 not in signed.stdout + signed.stderr


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("missing database", "no sitq database at"),
        ("bad import", "cannot import module 'no_such_module_here'"),
        ("newer schema", "schema version 99"),
        ("short key", "secret key must be at least 16 bytes"),
    ],
)
def test_worker_check_names_what_is_wrong(
    db_path: Path, filled_db: dict[str, str], tmp_path: Path, problem: str, expected: str
) -> None:
    db, args, env = str(db_path), ["--check"], subprocess_env()
    if problem == "missing database":
        db = str(tmp_path / "typo.db")
    elif problem == "bad import":
        args += ["--import", "no_such_module_here"]
    elif problem == "newer schema":
        with sqlite3.connect(db_path) as conn:
            conn.execute("UPDATE sitq_meta SET value = '99' WHERE key = 'schema_version'")
    else:
        env = subprocess_env(SITQ_SECRET_KEY="short")
    run = sitq("worker", "--db", db, *args, env=env)
    assert run.returncode == 1, run.stdout
    assert expected in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1  # one line, no traceback


def test_errors_never_show_a_database_password() -> None:
    url = "postgresql://app:s3cret-pw@127.0.0.1:1/app"  # nothing listens on port 1
    for command in (["worker", "--check"], ["status"]):
        run = sitq(*command, "--db", url)
        assert run.returncode == 1
        assert "127.0.0.1:1" in run.stderr and "s3cret-pw" not in run.stderr + run.stdout


def test_inspect_never_unpickles_an_unsigned_payload_unless_asked(
    db_path: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    with SyncTaskQueue(db_path) as queue:
        task_id = queue.enqueue(jobs.noop)
    evil = b"cposix\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE sitq_tasks SET payload = ? WHERE id = ?", (evil, task_id))
    run = sitq("inspect", "--db", str(db_path), task_id)
    assert run.returncode == 0, run.stderr
    assert "arguments not loaded" in run.stdout and "--show-args" in run.stdout
    assert not marker.exists()
    signed = sitq(
        "inspect", "--db", str(db_path), task_id, env=subprocess_env(SITQ_SECRET_KEY="k" * 32)
    )
    assert "PayloadRejected" in signed.stdout and not marker.exists()


def test_inspect_with_a_malformed_secret_key_is_one_clear_line(db_path: Path) -> None:
    """A short $SITQ_SECRET_KEY stops `sitq inspect` with the key's error, as it
    stops `sitq worker --check`, not with a traceback."""
    with SyncTaskQueue(db_path) as queue:
        task_id = queue.enqueue(jobs.noop)
    run = sitq(
        "inspect", "--db", str(db_path), task_id, env=subprocess_env(SITQ_SECRET_KEY="short")
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith("Error: a secret key must be at least 16 bytes")


def test_cancel_says_how_a_task_already_finished(db_path: Path) -> None:
    with SyncTaskQueue(db_path) as queue:
        task_id = queue.enqueue(jobs.add, 1, 2)
    assert sitq("worker", "--db", str(db_path), "--burst").returncode == 0
    run = sitq("cancel", "--db", str(db_path), task_id)
    assert run.returncode == 1
    assert f"task {task_id} has already finished as succeeded; nothing to cancel" in run.stderr


async def test_status_tells_ready_from_delayed_tasks(db_url: str) -> None:
    from sitq import TaskQueue

    async with TaskQueue(db_url) as queue:
        await queue.enqueue(jobs.add, 1, 2)
        await queue.enqueue(jobs.add, 3, 4)
        await queue.with_options(delay=3600).enqueue(jobs.add, 5, 6)
        await queue.with_options(queue="later", delay=3600).enqueue(jobs.add, 5, 6)
    run = sitq("status", "--db", db_url, "--json")
    assert run.returncode == 0, run.stderr
    queues = json.loads(run.stdout)["queues"]
    assert {name: (q["queued"], q["ready"], q["delayed"]) for name, q in queues.items()} == {
        "default": (3, 2, 1),
        "later": (1, 0, 1),
    }
    text = sitq("status", "--db", db_url).stdout.splitlines()
    assert text[1].split()[:3] == ["default", "2", "1"] and text[2].split()[:3] == [
        "later",
        "0",
        "1",
    ]


def test_dashboard_help_states_the_token_minimum() -> None:
    text = " ".join(sitq("dashboard", "--help").stdout.split())
    assert "at least 16 characters" in text


def test_help_names_both_backends_and_every_worker_option_has_help() -> None:
    text = " ".join(sitq("--help").stdout.split())
    assert "on SQLite (embedded) or PostgreSQL" in text
    text = " ".join(sitq("worker", "--help").stdout.split())
    assert "--log-level [debug|info|warning|error] Least severe log lines shown" in text


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
        timeout=60,
    )  # fmt: skip


def test_a_worker_command_loads_neither_workflows_nor_the_migration() -> None:
    run = _python(
        "import sys\n"
        "from sitq.cli import main\n"
        "try:\n"
        "    main(['worker', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['sitq', 'workflow'], ['sitq', 'migrate'], ['sitq', 'cli_migrate']) or m == 'yaml'))\n"
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "[]"
    listed = sitq("--help").stdout
    assert re.search(r"^\s+migrate\s+Copy everything", listed, re.M), listed
    assert re.search(r"^\s+workflow\s+Run YAML workflows", listed, re.M), listed
    assert "Usage: sitq migrate" in sitq("migrate", "--help").stdout


def test_workflow_without_its_extra_says_what_to_install() -> None:
    run = _python(
        "import sys\n"
        "sys.modules['yaml'] = None  # as if PyYAML were not installed\n"
        "from sitq.cli import main\n"
        "main(['workflow', 'run', 'flow.yaml'])\n"
    )
    assert run.returncode == 1, run.stderr
    assert "`sitq workflow` needs yaml: pip install 'sitq[workflow]'" in run.stderr


def test_a_broken_workflow_module_is_not_passed_off_as_a_missing_extra() -> None:
    run = _python(
        "import sys\n"
        "sys.modules['sitq.workflow.cli'] = None  # as if sitq's own module failed\n"
        "from sitq.cli import main\n"
        "main(['workflow', 'run', 'flow.yaml'])\n"
    )
    assert run.returncode == 1
    assert "import of sitq.workflow.cli halted" in run.stderr and "pip install" not in run.stderr


def test_worker_help_describes_the_default_prefetch() -> None:
    text = " ".join(sitq("worker", "--help").stdout.split())
    assert "see Worker" not in text
    assert (
        "Default: adaptive, about 50 ms of work per slot, at least 1 and at most 512 tasks "
        "waiting, holding about 8 MB of payloads at most"
    ) in text


def test_inspect_loads_arguments_from_the_apps_own_directory(db_path: Path, tmp_path: Path) -> None:
    """As the worker does: the current directory is on the import path, and
    --import MODULE (repeatable) imports modules first."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "myapp.py").write_text(
        "class Point:\n"
        "    def __init__(self, x, y):\n"
        "        self.x, self.y = x, y\n"
        "    def __repr__(self):\n"
        "        return f'Point({self.x}, {self.y})'\n"
        "def area(p):\n"
        "    return p.x * p.y\n"
    )
    (app / "myapp_setup.py").write_text("SETUP = True\n")
    import sys

    sys.path.insert(0, str(app))
    try:
        import myapp  # type: ignore[import-not-found]

        with SyncTaskQueue(db_path) as queue:
            task_id = queue.enqueue(myapp.area, myapp.Point(2, 3))
            keyword_id = queue.enqueue(myapp.area, p=myapp.Point(1, 1))
    finally:
        sys.path.remove(str(app))
        sys.modules.pop("myapp", None)
    db = str(db_path)
    run = sitq("inspect", "--db", db, "--show-args", task_id, cwd=app)
    assert run.returncode == 0, run.stderr
    assert "call: myapp.area(Point(2, 3))" in run.stdout, run.stdout  # as the dashboard shows it
    run = sitq("inspect", "--db", db, "--show-args", keyword_id, cwd=app)
    assert "call: myapp.area(p=Point(1, 1))" in run.stdout, run.stdout
    # From another directory the call cannot load: say how to make it load.
    run = sitq("inspect", "--db", db, "--show-args", task_id, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (
        "arguments not readable here: ModuleNotFoundError: No module named 'myapp'; "
        "run from the app's directory or pass --import MODULE)" in run.stdout
    ), run.stdout
    run = sitq(
        "inspect", "--db", db, "--show-args", "--import", "myapp", "-i", "myapp_setup", task_id,
        cwd=app,
    )  # fmt: skip
    assert run.returncode == 0 and "call: myapp.area(Point(2, 3))" in run.stdout
    run = sitq("inspect", "--db", db, "--import", "not_here_at_all", task_id, cwd=app)
    assert run.returncode == 1 and "cannot import module 'not_here_at_all'" in run.stderr
    assert "that `sitq inspect` runs where the module can be found" in run.stderr


def _shape(line: str) -> list[str]:
    """A status line's words with numbers, ages, worker ids and host names made
    generic: what must match between the documented sample and a real run."""
    words = line.split()
    if len(words) > 3 and words[3] == "pid":  # a worker line: ID STATE HOST pid ...
        words[0], words[2] = "ID", "HOST"
    return [re.sub(r"^\d+(\.\d+)?[smh]?$", "N", word) for word in words]


def test_worker_daemon_readme_status_sample_matches_real_output(
    db_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    readme = (Path(__file__).parent.parent / "examples" / "worker_daemon" / "README.md").read_text()
    sample = readme.split("$ sitq status\n", 1)[1].split("```", 1)[0].strip("\n").splitlines()
    with SyncTaskQueue(db_path) as queue:
        task_id = queue.enqueue(jobs.add, 1, 2)
    spawn_worker("--concurrency", "3").wait_started()
    with SyncTaskQueue(db_path) as queue:
        assert queue.get_result(task_id, timeout=20) is not None
    real = sitq("status", "--db", str(db_path)).stdout.strip("\n").splitlines()
    assert [_shape(line) for line in real] == [_shape(line) for line in sample]


async def test_pause_and_retry_note_a_queue_no_task_or_worker_has_used(
    db_url: str, tmp_path: Path
) -> None:
    """A mistyped queue is still paused (a worker may come for it), but stderr says
    no task or worker has used it and names the known queues; a known one is quiet."""
    from sitq import TaskQueue

    async with TaskQueue(db_url) as queue:
        await queue.enqueue(jobs.add, 1, 2)
        await queue.with_options(queue="mail").enqueue(jobs.add, 3, 4)
    worker = WorkerProcess(db_url, tmp_path, "--queue", "reports").wait_started()
    try:
        note = (
            "note: no task or worker has used queue 'emial' (known queues: default, mail, reports)"
        )
        run = sitq("pause", "--db", db_url, "emial")
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("paused queue 'emial'")
        assert run.stderr.strip() == note
        run = sitq("retry", "--db", db_url, "--failed", "--queue", "emial")
        assert (run.returncode, run.stdout.strip()) == (0, "queued 0 task(s) again")
        assert run.stderr.strip() == note
        for known in ("mail", "reports"):  # used by a task; served by a worker
            run = sitq("pause", "--db", db_url, known)
            assert run.returncode == 0 and run.stderr == "", run.stderr
            run = sitq("retry", "--db", db_url, "--failed", "--queue", known)
            assert run.returncode == 0 and run.stderr == "", run.stderr
    finally:
        worker.stop()


async def test_the_worker_logs_one_line_per_failed_attempt(db_url: str, tmp_path: Path) -> None:
    """At the default level a `sitq worker` says which task failed, on which attempt,
    and why: INFO when a retry is scheduled, WARNING when it failed for good; a
    success adds nothing."""
    from sitq import TaskQueue

    async with TaskQueue(db_url) as queue:
        failing = await queue.with_options(max_retries=1, retry_backoff=0).enqueue(
            jobs.fail, "broken\x1b[2J" + "x" * 1000
        )
        ok = await queue.enqueue(jobs.add, 1, 2)
    worker = WorkerProcess(db_url, tmp_path).wait_started()
    try:
        async with TaskQueue(db_url) as queue:
            assert (await queue.get_result(failing, timeout=30)).status is TaskStatus.FAILED
            assert (await queue.get_result(ok, timeout=30)).value == 3
        wait_until(lambda: "attempt 2/2" in worker.output(), 10, "the failure log line")
        lines = [line for line in worker.output().splitlines() if f"task {failing}" in line]
        assert len(lines) == 2, worker.output()
        prefix = f"task {failing} (jobs.fail) failed on attempt"
        assert " INFO sitq.worker: " + prefix + " 1/2: ValueError: broken\\x1b[2Jxxx" in lines[0]
        assert lines[0].endswith("...; retry in 0.0 s"), lines[0]
        assert " WARNING sitq.worker: " + prefix + " 2/2: ValueError: broken\\x1b[2Jxxx" in lines[1]
        assert "\x1b" not in worker.output() and len(lines[1]) < 450
        assert ok not in worker.output()
    finally:
        worker.stop()
