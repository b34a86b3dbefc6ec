"""The ``sitq`` command: run workers and look after the queue."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

import click

from sitq.app_imports import import_modules, import_option
from sitq.dashboard.cli import dashboard as dashboard_command
from sitq.display import bounded_repr, call_text, redact, terminal_safe, terminal_safe_data
from sitq.errors import SitqError, TaskNotFound
from sitq.headers import unwrap as unwrap_headers
from sitq.overview import Overview
from sitq.queue import TaskQueue
from sitq.records import CancelOutcome, record_to_result
from sitq.schedules import has_run
from sitq.serialization import (
    CloudpickleSerializer,
    SignedSerializer,
    bound_loads,
    default_serializer,
    payload_binding,
)
from sitq.task import FINISHED_STATUSES, TaskStatus
from sitq.worker import MAX_PREFETCH, POOLS, PREFETCH_HORIZON, Worker

T = TypeVar("T")

db_option = click.option(
    "--db",
    envvar="SITQ_DB",
    default="sitq.db",
    show_default=True,
    help="Database path or URL (defaults to $SITQ_DB, else sitq.db).",
)


def _fail(message: str) -> None:
    # Every error line passes here: a database URL in it never shows its password.
    raise click.ClickException(redact(message))


class _SafeFormatter(logging.Formatter):
    """The worker's log lines without database passwords or terminal control
    characters (a log may be read on a terminal; tracebacks keep their lines)."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal_safe(redact(super().format(record)), keep_newlines=True)


def _run(coro_fn: Callable[[TaskQueue], Awaitable[T]], db: str, *, create: bool = False) -> T:
    """Open the database, run ``coro_fn`` against it, close it; SitqErrors become one line."""

    async def main() -> T:
        # The commands load no payload through this queue (`inspect` uses its own
        # serializer): a malformed $SITQ_SECRET_KEY must not stop `sitq status`.
        queue = TaskQueue(db, CloudpickleSerializer(), create=create)
        await queue.connect()
        try:
            return await coro_fn(queue)
        finally:
            await queue.close()

    try:
        return asyncio.run(main())
    except SitqError as exc:
        _fail(str(exc))
        raise AssertionError("unreachable") from exc


@click.group()
@click.version_option(package_name="sitq")
def main() -> None:
    """sitq: a crash-safe task queue on SQLite (embedded) or PostgreSQL."""


@main.command()
@db_option
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Tasks run at once.",
)
@click.option(
    "--queue",
    "-q",
    "queues",
    multiple=True,
    default=("default",),
    show_default=True,
    help="Queue to serve (repeatable).",
)
@click.option(
    "--pool",
    type=click.Choice(POOLS),
    default="auto",
    show_default=True,
    help="auto: coroutines on the loop, functions in threads; thread; process.",
)
@click.option(
    "--max-tasks-per-child",
    type=click.IntRange(min=1),
    default=None,
    help="Replace a process-pool child after this many tasks.",
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=0),
    default=None,
    help="Tasks claimed beyond the free slots. Default: adaptive, about "
    f"{PREFETCH_HORIZON * 1000:.0f} ms of work per slot, at least 1 and at most "
    f"{MAX_PREFETCH} (short tasks are claimed in batches; long ones are not hoarded).",
)
@import_option("so its tasks resolve")
@click.option(
    "--lease",
    type=click.FloatRange(min=0.5),
    default=30.0,
    show_default=True,
    help="Seconds before a dead worker's task runs elsewhere.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds SIGTERM waits for running tasks before releasing them.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Least severe log lines shown on stderr (info: start, stop, retries, failed tasks).",
)
@click.option(
    "--burst",
    is_flag=True,
    help="Run until no task is ready and none runs, then exit: 0 if none failed, "
    "1 otherwise (with a summary).",
)
@click.option(
    "--check",
    is_flag=True,
    help="Check the database, its schema, the --import modules and the secret key; "
    "exit 0 if all is well (a pre-start check for service managers).",
)
def worker(
    db: str,
    concurrency: int,
    queues: tuple[str, ...],
    pool: str,
    max_tasks_per_child: int | None,
    prefetch: int | None,
    imports: tuple[str, ...],
    lease: float,
    grace: float,
    log_level: str,
    burst: bool,
    check: bool,
) -> None:
    """Run a worker until SIGTERM/SIGINT (a second signal stops at once)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=log_level.upper(), handlers=[handler])
    import_modules(imports, "worker")
    if check:
        _check_worker_setup(db, imports)
        return
    try:
        # Opened once without creating it: a mistyped path is an error, not a new
        # empty database that the worker would then serve.
        _run(_noop, db)
        the_worker = Worker(
            db,
            concurrency=concurrency,
            queues=queues,
            pool=pool,
            max_tasks_per_child=max_tasks_per_child,
            prefetch=prefetch,
            lease_seconds=lease,
            grace_period=grace,
            imports=imports,
            burst=burst,
        )
        asyncio.run(the_worker.run())
    except SitqError as exc:
        _fail(str(exc))
    if burst:
        counts = the_worker.outcomes
        summary = ", ".join(f"{counts[k]} {k}" for k in ("succeeded", "failed", "cancelled"))
        click.echo(f"burst done: {summary} ({counts['retried']} retried attempts)")
        if counts["failed"]:
            raise SystemExit(1)


@main.command()
@db_option
@click.argument("queue")
def pause(db: str, queue: str) -> None:
    """Stop workers taking tasks from QUEUE (running ones finish; enqueue still works)."""

    async def act(tasks: TaskQueue) -> str | None:
        await tasks.pause(queue)
        return await _unused_queue_note(tasks, queue)

    note = _run(act, db)
    click.echo(f"paused queue {queue!r}; `sitq resume {queue}` to undo")
    if note:
        click.echo(note, err=True)


async def _unused_queue_note(tasks: TaskQueue, queue: str) -> str | None:
    """A note when no task and no worker has used ``queue`` (likely a typo), naming
    the queues that are known. Workers first (a small table); the tasks' queues
    (the grouped count `sitq status` reads) only when no worker serves it."""
    known = {name for worker in await tasks.workers() for name in worker.queues}
    if queue in known:
        return None
    counts, _ = await tasks.task_counts()
    known.update(name for name, _ in counts)
    if queue in known:
        return None
    names = ", ".join(sorted(known)) or "none"
    return terminal_safe(
        f"note: no task or worker has used queue {queue!r} (known queues: {names})"
    )


@main.command()
@db_option
@click.argument("queue")
def resume(db: str, queue: str) -> None:
    """Let workers take tasks from QUEUE again."""

    async def act(tasks: TaskQueue) -> bool:
        return await tasks.resume(queue)

    was_paused = _run(act, db)
    click.echo(f"resumed queue {queue!r}" if was_paused else f"queue {queue!r} was not paused")


def _add_optional_commands() -> None:
    """Commands from extras: present when installed, else a clear message."""
    try:
        from sitq.workflow.cli import workflow
    except ImportError as exc:
        missing = exc.name or "a dependency"

        @main.command(
            name="workflow",
            context_settings={"ignore_unknown_options": True},
            add_help_option=False,
        )
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def workflow(args: tuple[str, ...]) -> None:
            """Run YAML workflows (needs: pip install 'sitq[workflow]')."""
            _fail(f"`sitq workflow` needs {missing}: pip install 'sitq[workflow]'")

        return
    main.add_command(workflow)


# Importing it loads no web framework: without the extra it says what to install.
main.add_command(dashboard_command)


_add_optional_commands()


def _check_worker_setup(db: str, imports: tuple[str, ...]) -> None:
    """What `sitq worker --check` verifies, in the order a start would fail."""
    try:
        serializer = default_serializer()  # a malformed $SITQ_SECRET_KEY fails here
    except SitqError as exc:
        _fail(str(exc))

    async def probe(tasks: TaskQueue) -> str:
        return tasks.describe()

    where = _run(probe, db)  # opens it: missing database, wrong schema version, no server
    signed = "signed payloads" if isinstance(serializer, SignedSerializer) else "unsigned payloads"
    click.echo(
        f"ok: {where} (schema version current); imports: {', '.join(imports) or 'none'}; {signed}"
    )


async def _noop(tasks: TaskQueue) -> None:
    return None


@main.command()
@db_option
def init(db: str) -> None:
    """Create the database (owner-only) if it does not exist."""

    _run(_noop, db, create=True)
    click.echo(f"sitq database ready at {redact(db)}")


@main.command()
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--watch", is_flag=True, help="Refresh in place until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@click.option(
    "--failures",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="How many recent failures to list.",
)
def status(db: str, as_json: bool, watch: bool, interval: float, failures: int) -> None:
    """Tasks per queue and status, live workers and what they run, the oldest
    waiting task, and recent failures."""
    if not watch:
        report = _run(lambda tasks: _status_report(tasks, failures), db)
        click.echo(json.dumps(report, indent=2) if as_json else _render_status(report))
        return
    try:
        while True:
            report = _run(lambda tasks: _status_report(tasks, failures), db)
            text = json.dumps(report) if as_json else _render_status(report)
            if as_json:
                click.echo(text)
            else:
                # Home the cursor and clear the screen, then draw: refresh in place.
                stamp = datetime.now().strftime("%H:%M:%S")
                click.echo(f"\x1b[H\x1b[2J{text}\n\nrefreshed {stamp}, every {interval:g} s")
            time.sleep(interval)
    except KeyboardInterrupt:
        return


async def _status_report(tasks: TaskQueue, failures: int) -> dict[str, Any]:
    """Everything `sitq status` shows, as plain data (the --json output)."""
    return _status_data(await tasks.overview(failures=failures))


def _status_data(view: Overview) -> dict[str, Any]:
    """The overview as `sitq status --json` prints it."""
    queues: dict[str, dict[str, Any]] = {}
    for name, summary in view.queues.items():
        queues[name] = {
            **summary.counts,
            "ready": summary.ready,
            # Queued but not yet due (a delay, an eta or a retry's backoff), nor held.
            "delayed": summary.delayed,
            "oldest_waiting_seconds": None
            if summary.oldest_wait is None
            else round(summary.oldest_wait, 1),
            "paused": summary.paused,
            # Of the queued tasks, those a worker holds (prefetched) and has not started.
            "claimed": summary.claimed,
        }
    worker_rows = [
        {
            "id": w.record.id,
            "host": w.record.hostname,
            "pid": w.record.pid,
            "queues": list(w.record.queues),
            "concurrency": w.record.concurrency,
            "heartbeat_age": round(w.heartbeat_age, 1),
            "state": w.state,
            "running": [
                {
                    "id": task.id,
                    "task": task.func_name,
                    "queue": task.queue,
                    "attempt": task.attempts,
                    "running_seconds": round(view.now - (task.started_at or view.now), 1),
                }
                for task in w.running
            ],
            "claimed": w.claimed,
        }
        for w in view.workers
    ]
    failure_rows = [
        {
            "id": task.id,
            "task": task.func_name,
            "queue": task.queue,
            "finished_at": _when(task.finished_at),
            "attempts": task.attempts,
            "error": _first_line(task.error),
        }
        for task in view.recent_failures
    ]
    schedule_rows = [
        {
            "name": record.name,
            "spec": record.spec,
            "last_run": _when(record.last_run_at if has_run(record) else None),
            "next_run": _when(record.next_run_at),
        }
        for record in view.schedules
    ]
    limit_rows = [
        {
            "key": limit.key,
            "max_running": limit.max_running,
            "max_starts": limit.max_starts,
            "per_seconds": limit.per_seconds,
        }
        for limit in view.limits
    ]
    return {
        "queues": queues,
        "workers": worker_rows,
        "recent_failures": failure_rows,
        "schedules": schedule_rows,
        "limits": limit_rows,
    }


def _render_status(report: dict[str, Any]) -> str:
    # Stored names and errors could hold escape sequences: none reaches the terminal.
    report = terminal_safe_data(report)
    # Queued tasks in two columns: ready (due now) and delayed (waiting for their time).
    columns = [
        name
        for status in TaskStatus
        for name in (("ready", "delayed") if status is TaskStatus.QUEUED else (status.value,))
    ]
    queues = report["queues"]
    lines = [f"{'queue':<20}" + "".join(f"{s:>11}" for s in columns) + f"{'oldest wait':>13}"]
    for queue in sorted(queues):
        row = queues[queue]
        wait = row["oldest_waiting_seconds"]
        lines.append(
            f"{queue:<20}"
            + "".join(f"{row[s]:>11}" for s in columns)
            + f"{'-' if wait is None else _age(wait):>13}"
            + ("  (paused)" if row["paused"] else "")
            + (f"  ({row['claimed']} queued claimed by workers)" if row.get("claimed") else "")
        )
    if not queues:
        lines.append("(no tasks)")
    live = [w for w in report["workers"] if w["state"] != "stopped"]
    lines.append(
        f"\nworkers: {sum(w['state'] == 'alive' for w in live)} alive, "
        f"{sum(w['state'] == 'dead' for w in live)} dead"
    )
    for w in live:
        lines.append(
            f"  {w['id']:<32} {w['state']:<6} {w['host']} pid {w['pid']:<8} concurrency "
            f"{w['concurrency']:<3} queues {','.join(w['queues'])}  heartbeat "
            f"{_age(w['heartbeat_age'])} ago"
        )
        for task in w["running"]:
            lines.append(
                f"      running {task['id']} {task['task']} (attempt {task['attempt']}, "
                f"for {_age(task['running_seconds'])})"
            )
        if w["claimed"]:
            lines.append(f"      holds {w['claimed']} claimed, not started yet")
    if report["schedules"]:
        lines.append("\nschedules:")
        for schedule in report["schedules"]:
            lines.append(
                f"  {schedule['name']:<32} {schedule['spec']:<28} "
                f"next {schedule['next_run']}  last {schedule['last_run']}"
            )
    if report["limits"]:
        lines.append("\nlimits:")
        for limit in report["limits"]:
            parts = []
            if limit["max_running"] is not None:
                parts.append(f"at most {limit['max_running']} running")
            if limit["max_starts"] is not None:
                parts.append(f"{limit['max_starts']} starts per {limit['per_seconds']:g}s")
            lines.append(f"  {limit['key']:<32} {', '.join(parts)}")
    if report["recent_failures"]:
        lines.append("\nrecent failures:")
        for failure in report["recent_failures"]:
            lines.append(
                f"  {failure['finished_at']}  {failure['id']}  {failure['task']} "
                f"[{failure['queue']}]: {failure['error']}"
            )
    return "\n".join(lines)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _first_line(text: str | None, limit: int = 160) -> str:
    line = (text or "").strip().splitlines()[0] if text and text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, tz=timezone.utc).isoformat(timespec="milliseconds")


@main.command()
@db_option
@click.argument("task_id")
@click.option(
    "--show-args",
    is_flag=True,
    help="Load and show the call's arguments and result even though payloads are not "
    "signed here (loading a pickle runs code from the database).",
)
@import_option("so the call's arguments and result load")
def inspect(db: str, task_id: str, show_args: bool, imports: tuple[str, ...]) -> None:
    """Show one task: its call, attempts, timings, result or error.

    Arguments and the result are loaded (unpickled) only when they are signed
    and verified with $SITQ_SECRET_KEY, or with --show-args. As for the worker,
    the current directory is on the import path, so run it where your app runs.
    """
    import_modules(imports, "inspect")  # the arguments may be instances of the app's classes

    async def fetch(tasks: TaskQueue) -> Any:
        return await tasks.task_record(task_id, payload=True)

    record = _run(fetch, db)
    if record is None:
        _fail(f"no task with id {task_id!r} in {db}")
    serializer = default_serializer()
    loadable = show_args or isinstance(serializer, SignedSerializer)
    if not loadable:
        call = (
            f"{record.func_name}(...) (arguments not loaded: unsigned payloads run code when "
            "loaded; set $SITQ_SECRET_KEY, or pass --show-args for a database you trust)"
        )
    else:
        try:
            body = unwrap_headers(record.payload)[1]
            binding = payload_binding(record.id, record.func_name, record.queue)
            _, args, kwargs = bound_loads(serializer, body, binding)
            call = call_text(record.func_name, args, kwargs)
        except Exception as exc:
            # A class or module of the app that this process cannot import: say how to fix it.
            hint = (
                "; run from the app's directory or pass --import MODULE"
                if isinstance(exc, (ImportError, AttributeError))
                else ""
            )
            call = (
                f"{record.func_name} (arguments not readable here: "
                f"{type(exc).__name__}: {exc}{hint})"
            )
    lines = [
        ("id", record.id),
        ("call", call),
        ("queue", record.queue),
        (
            "status",
            f"{record.status} (claimed by worker {record.worker_id}, not started)"
            if record.claimed
            else record.status,
        ),
        ("priority", record.priority),
        ("attempts", f"{record.attempts} (max retries {record.max_retries})"),
        ("enqueued", _when(record.enqueued_at)),
        ("available", _when(record.available_at)),
        ("started", _when(record.started_at)),
        ("finished", _when(record.finished_at)),
        ("worker", record.worker_id or "-"),
    ]
    if TaskStatus(record.status) in FINISHED_STATUSES and record.result is not None:
        if not loadable:
            lines.append(("result", "(not loaded: see the call line)"))
        else:
            try:
                value = record_to_result(record, serializer).value
                lines.append(("result", bounded_repr(value)))
            except SitqError as exc:
                lines.append(("result", f"(not readable here: {exc})"))
    for label, value in lines:
        click.echo(f"{label:>10}: {terminal_safe(str(value))}")
    # Stored text shown as it is but for control characters (tracebacks keep their lines).
    if record.error:
        click.echo(f"{'error':>10}: {terminal_safe(record.error, keep_newlines=True)}")
    if record.traceback:
        click.echo("\n" + terminal_safe(record.traceback.rstrip(), keep_newlines=True))


@main.command()
@db_option
@click.argument("task_id", required=False)
@click.option("--failed", "all_failed", is_flag=True, help="Retry every failed task.")
@click.option("--queue", default=None, help="With --failed: only this queue.")
def retry(db: str, task_id: str | None, all_failed: bool, queue: str | None) -> None:
    """Queue a failed or cancelled task again (or every failed task with --failed)."""
    if bool(task_id) == all_failed:
        raise click.UsageError("give either a TASK_ID or --failed")

    async def requeue(tasks: TaskQueue) -> tuple[int, bool, str | None]:
        if all_failed:
            count = await tasks.retry_failed(queue)
            # Nothing retried in a named queue: say so if the name is likely a typo.
            note = await _unused_queue_note(tasks, queue) if queue and not count else None
            return count, True, note
        count = await tasks.retry_many([task_id or ""])
        return count, bool(count or await tasks.task_record(task_id or "", result=False)), None

    count, exists, note = _run(requeue, db)
    if not exists:
        _fail(f"no task with id {task_id!r} in {db}")
    if task_id and not count:
        _fail(f"task {task_id} is not failed or cancelled; only those can be retried")
    click.echo(f"queued {count} task(s) again")
    if note:
        click.echo(note, err=True)


@main.command()
@db_option
@click.argument("task_id")
def cancel(db: str, task_id: str) -> None:
    """Cancel a queued task, or ask the worker holding a task to stop it.

    A task a worker has claimed but not started (it reads queued) is cancelled by
    that worker at once, unless it starts first: then it is stopped as it runs."""

    async def do_cancel(tasks: TaskQueue) -> tuple[str | None, str | None]:
        try:
            outcome = await tasks.request_cancel(task_id)
        except TaskNotFound:
            return None, None
        if outcome is CancelOutcome.REQUESTED:
            # Held, started or not: say which, and by whom (its worker, woken,
            # may have cancelled it already).
            record = await tasks.task_record(task_id, result=False)
            if record is not None and record.status == TaskStatus.CANCELLED.value:
                return "cancelled", None
            return outcome.value, record.worker_id if record and record.claimed else None
        if outcome is CancelOutcome.FINISHED:
            # Finished: say how, so "already cancelled" is not read as a failure.
            record = await tasks.task_record(task_id, result=False)
            return outcome.value, record.status if record else None
        return outcome.value, None

    outcome, detail = _run(do_cancel, db)  # the holder, or how it finished
    if outcome is None:
        _fail(f"no task with id {task_id!r} in {db}")
    messages = {
        "cancelled": f"task {task_id} cancelled",
        "requested": f"task {task_id} is running: its worker was asked to stop it",
    }
    if outcome == "requested" and detail is not None:
        click.echo(
            f"task {task_id} is held by worker {terminal_safe(detail)}, not started: "
            "cancelled unless it starts first (then its worker stops it)"
        )
    elif outcome in messages:
        click.echo(messages[str(outcome)])
    elif detail == TaskStatus.CANCELLED.value:
        click.echo(f"task {task_id} was already cancelled")
    else:
        how = f" as {detail}" if detail else ""
        _fail(f"task {task_id} has already finished{how}; nothing to cancel")


@main.command()
@db_option
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["succeeded", "failed", "cancelled", "queued"]),
    help="Statuses to delete (repeatable; default: every finished status). 'queued' "
    "leaves tasks a worker has claimed but not started (they read queued): cancel those.",
)
@click.option("--queue", default=None, help="Only this queue.")
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    default=None,
    help="Only tasks finished more than this many seconds ago.",
)
def purge(db: str, statuses: tuple[str, ...], queue: str | None, older_than: float | None) -> None:
    """Delete tasks (by default: every finished task and its result).

    A task a worker holds is never deleted: with --status queued, those claimed but
    not started (listed as queued, "claimed") stay; `sitq cancel` them instead."""
    chosen = statuses or ("succeeded", "failed", "cancelled")

    async def do_purge(tasks: TaskQueue) -> int:
        return await tasks.purge(chosen, queue=queue, older_than=older_than)

    started = time.monotonic()
    count = _run(do_purge, db)
    click.echo(f"deleted {count} task(s) in {time.monotonic() - started:.2f}s")


if __name__ == "__main__":  # pragma: no cover
    main()
