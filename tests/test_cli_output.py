"""What the `sitq` commands print is safe to print: no database password, and no
stored text that drives the terminal. Real commands, real databases, real workers."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import jobs
import pytest
from support import (
    SITQ,
    drop_postgres_schema,
    postgres_available,
    postgres_url,
    subprocess_env,
)

from sitq import SyncTaskQueue
from sitq.display import redact, terminal_safe

PLANTED = "Planted-pw-5e1f"


def sitq(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SITQ, *args], capture_output=True, text=True, env=subprocess_env(), cwd=cwd, timeout=60
    )


def _with_password(url: str) -> tuple[str, str]:
    """``url`` carrying a password, and that password. The test server trusts local
    connections, so a planted one is ignored; a URL that has one keeps its own."""
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = f"{parts.username or 'postgres'}:{PLANTED}@{host}"
    return urlunsplit(parts._replace(netloc=netloc)), PLANTED


@pytest.fixture
async def url_with_password(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """A PostgreSQL URL (its own schema) with a password in it, and the password."""
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    schema = "t_" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:16]
    await drop_postgres_schema(schema)
    yield _with_password(postgres_url(schema))
    await drop_postgres_schema(schema)


def _dashboard_start_line(url: str) -> str:
    """The dashboard's start-up line (it comes before serving), then stop it."""
    proc = subprocess.Popen(
        [SITQ, "dashboard", "--db", url, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    try:
        assert proc.stderr is not None
        return proc.stderr.readline()
    finally:
        proc.kill()
        proc.wait(10)


def test_no_command_prints_the_database_password(
    url_with_password: tuple[str, str], tmp_path: Path
) -> None:
    url, password = url_with_password
    outputs: dict[str, str] = {}

    def run(*args: str, expect: int | None = 0) -> str:
        done = sitq(*args[:1], "--db", url, *args[1:])
        text = done.stdout + done.stderr
        if expect is not None:
            assert done.returncode == expect, f"{args}: {text}"
        outputs[" ".join(args)] = text
        return text

    assert "sitq database ready at" in run("init")
    with SyncTaskQueue(url) as queue:
        ok_id = queue.enqueue(jobs.add, 1, 2)
        failed_id = queue.enqueue(jobs.fail, "broken")
    assert run("worker", "--check").startswith("ok: PostgreSQL")
    run("worker", "--burst", "--log-level", "debug", expect=1)  # one task fails
    run("status")
    run("status", "--json")
    run("inspect", ok_id)
    run("inspect", "--show-args", failed_id)
    run("inspect", "no-such-id", expect=1)
    run("retry", "no-such-id", expect=1)
    run("retry", ok_id, expect=1)
    run("retry", failed_id)
    run("cancel", "no-such-id", expect=1)
    run("cancel", ok_id, expect=1)
    run("pause", "default")
    run("resume", "default")
    run("purge")
    workflows = sitq("workflow", "status", "--db", url)
    assert workflows.returncode == 0, workflows.stderr
    outputs["workflow status"] = workflows.stdout + workflows.stderr
    outputs["dashboard"] = _dashboard_start_line(url)
    assert "sitq dashboard for postgresql://" in outputs["dashboard"]
    # Failures before any server answers: nothing listens on port 1; a broken URL.
    unreachable = url.replace(urlsplit(url).netloc.rsplit("@", 1)[-1], "127.0.0.1:1")
    for bad_url in (unreachable, url.replace("@", "@[", 1)):
        for command in (["worker", "--check"], ["init"]):
            done = sitq(*command, "--db", bad_url)
            assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
            outputs[f"{command} {bad_url}"] = done.stdout + done.stderr
    leaks = [name for name, text in outputs.items() if password in text]
    assert not leaks, f"the password shows in: {leaks}"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/x", "postgresql://app:***@db:5432/x"),
        ("postgres://app:p@ss/w0rd@db/x?a=1", "postgres://app:***@db/x?a=1"),
        ("postgresql://db/x?sslmode=require&password=s3cret", "password=***"),
        ("error at postgresql://u:s3cret@h/d: refused", "error at postgresql://u:***@h/d: refused"),
        ("postgresql://app@db/x", "postgresql://app@db/x"),
        ("/srv/app/tasks.db", "/srv/app/tasks.db"),
    ],
)
def test_redact_hides_every_form_of_password(text: str, shown: str) -> None:
    assert shown in redact(text)
    assert "s3cret" not in redact(text) and "w0rd" not in redact(text)


# Erase the screen, retitle the window and ring (OSC ... BEL), a C1 CSI, a carriage
# return that would overwrite the line, NUL, DEL and a right-to-left override.
NASTY = "boom\x1b[2J\x1b]0;owned\x07 \x9b31m \roverwritten \x00\x7f \u202etxt"
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def test_stored_text_cannot_drive_the_terminal(db_path: Path) -> None:
    queue_name = "mail\x1b[31m"
    with SyncTaskQueue(db_path) as queue:
        task_id = queue.with_options(queue=queue_name).enqueue(jobs.fail, NASTY)
    worker = sitq("worker", "--db", str(db_path), "--queue", queue_name, "--burst")
    assert worker.returncode == 1, worker.stderr  # the task failed, as it should
    # Someone with write access to the database plants more: a task name, and a
    # live-looking worker whose id and host name carry escape sequences.
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "UPDATE sitq_tasks SET func_name = 'jobs.fail\x1b[8m' WHERE id = ?", (task_id,)
        )
        conn.execute(
            "UPDATE sitq_workers SET id = 'w\x1b[1A', hostname = 'host\x9d0;t\x9c', "
            "stopped_at = NULL, heartbeat_at = ?",
            (time.time(),),
        )
    status = sitq("status", "--db", str(db_path))
    inspect = sitq("inspect", "--db", str(db_path), "--show-args", task_id)
    for run in (status, inspect, worker):
        assert not CONTROL.search(run.stdout + run.stderr), repr(run.stdout + run.stderr)
    # Escaped, not dropped: what was stored can still be read.
    assert "boom\\x1b[2J\\x1b]0;owned\\x07 \\x9b31m" in status.stdout  # its first line
    assert "mail\\x1b[31m" in status.stdout
    assert "jobs.fail\\x1b[8m" in status.stdout and "jobs.fail\\x1b[8m" in inspect.stdout
    assert "w\\x1b[1A" in status.stdout and "host\\x9d0;t\\x9c" in status.stdout
    assert "ValueError: boom\\x1b[2J\\x1b]0;owned\\x07 \\x9b31m \\roverwritten" in inspect.stdout
    assert "\\u202etxt" in inspect.stdout
    # A traceback keeps its lines.
    assert "\nTraceback (most recent call last):\n" in inspect.stdout
    assert (
        "line " in inspect.stdout.split("Traceback (most recent call last):\n")[1].splitlines()[0]
    )


def test_terminal_safe_keeps_tabs_and_chosen_newlines() -> None:
    assert terminal_safe("a\tb\nc") == "a\tb\\nc"
    assert terminal_safe("a\tb\nc\x1b", keep_newlines=True) == "a\tb\nc\\x1b"
