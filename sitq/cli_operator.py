"""The ``sitq`` commands that look after the queue: status, inspect, retry, cancel,
purge, pause and resume (``sitq.cli`` adds them to the group)."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import click

from sitq.commands import (
    app_serializer,
    call_of,
    db_option,
    fail,
    import_modules,
    import_option,
    run_on_queue,
)
from sitq.display import (
    bounded_repr,
    first_line,
    progress_text,
    terminal_safe,
    terminal_safe_data,
)
from sitq.errors import SitqError, TaskNotFound
from sitq.overview import Overview
from sitq.queue import TaskQueue
from sitq.records import CancelOutcome, record_to_result
from sitq.schedules import has_run
from sitq.serialization import SignedSerializer
from sitq.task import FINISHED_STATUSES, TaskStatus

if TYPE_CHECKING:
    from sitq import Progress


@click.command()
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
    try:
        while True:
            report = _status_data(run_on_queue(db, lambda q: q.overview(failures=failures)))
            if as_json:
                text = json.dumps(report, indent=None if watch else 2)
            else:
                text = _render_status(report)
                if watch:  # home the cursor and clear the screen, then draw: refresh in place
                    stamp = datetime.now().strftime("%H:%M:%S")
                    text = f"\x1b[H\x1b[2J{text}\n\nrefreshed {stamp}, every {interval:g} s"
            click.echo(text)
            if not watch:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        if not watch:
            raise


def _status_data(view: Overview) -> dict[str, Any]:
    """The overview as `sitq status --json` prints it."""
    return {
        "queues": {
            name: {
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
            for name, summary in view.queues.items()
        },
        "workers": [
            {
                "id": w.record.id,
                # The `sitq worker --processes N` that started it (None: on its own).
                "supervisor": w.supervisor,
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
                        "progress": _progress_dict(task.progress),
                    }
                    for task in w.running
                ],
                "claimed": w.claimed,
            }
            for w in view.workers
        ],
        "recent_failures": [
            {
                "id": task.id,
                "task": task.func_name,
                "queue": task.queue,
                "finished_at": _when(task.finished_at),
                "attempts": task.attempts,
                "error": first_line(task.error),
            }
            for task in view.recent_failures
        ],
        "schedules": [
            {
                "name": record.name,
                "spec": record.spec,
                "last_run": _when(record.last_run_at if has_run(record) else None),
                "next_run": _when(record.next_run_at),
            }
            for record in view.schedules
        ],
        "limits": [dataclasses.asdict(limit) for limit in view.limits],
    }


def _worker_lines(w: dict[str, Any], indent: str) -> list[str]:
    """A worker of `sitq status`: its line, then what it runs and holds."""
    lines = [
        f"{indent}{w['id']:<32} {w['state']:<6} {w['host']} pid {w['pid']:<8} concurrency "
        f"{w['concurrency']:<3} queues {','.join(w['queues'])}  heartbeat "
        f"{_age(w['heartbeat_age'])} ago"
    ]
    for task in w["running"]:
        done = task["progress"]
        shown = "" if done is None else ", " + progress_text(*list(done.values())[:3])
        lines.append(
            f"{indent}    running {task['id']} {task['task']} (attempt {task['attempt']}, "
            f"for {_age(task['running_seconds'])}{shown})"
        )
    if w["claimed"]:
        lines.append(f"{indent}    holds {w['claimed']} claimed, not started yet")
    return lines


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
    # The children of one `sitq worker --processes N` are listed under it, where
    # the first of them would be; a worker on its own is one line at the margin.
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for w in live:
        key = ("supervisor", w["supervisor"]) if w["supervisor"] else ("worker", w["id"])
        groups.setdefault(key, []).append(w)
    for (kind, name), members in groups.items():
        indent = "  "
        if kind == "supervisor":
            alive = sum(m["state"] == "alive" for m in members)
            lines.append(f"  supervisor {name}: {len(members)} worker processes ({alive} alive)")
            indent = "    "
        for w in members:
            lines += _worker_lines(w, indent)
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


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, tz=timezone.utc).isoformat(timespec="milliseconds")


@click.command()
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
    record = run_on_queue(db, lambda tasks: tasks.task_record(task_id, payload=True))
    if record is None:
        fail(f"no task with id {task_id!r} in {db}")
    serializer = app_serializer()
    loadable = show_args or isinstance(serializer, SignedSerializer)
    if not loadable:
        call = (
            f"{record.func_name}(...) (arguments not loaded: unsigned payloads run code when "
            "loaded; set $SITQ_SECRET_KEY, or pass --show-args for a database you trust)"
        )
    else:
        try:
            call = call_of(record, serializer)
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
    links = run_on_queue(db, lambda tasks: tasks.task_links(task_id))
    claimed = f" (claimed by worker {record.worker_id}, not started)" if record.claimed else ""
    available = _when(record.available_at)
    if links is not None and links.waiting and record.status == "queued":
        claimed += f" (waiting for {links.waiting} of {len(links.parents)} parents)"
        available = "once its parents have finished"
    lines = [
        ("id", record.id),
        ("call", call),
        ("queue", record.queue),
        ("status", record.status + claimed),
        ("priority", record.priority),
        ("attempts", f"{record.attempts} (max retries {record.max_retries})"),
        ("enqueued", _when(record.enqueued_at)),
        ("available", available),
        ("started", _when(record.started_at)),
        ("finished", _when(record.finished_at)),
        ("worker", record.worker_id or "-"),
    ]
    if record.progress is not None:
        done = record.progress
        lines.append(
            (
                "progress",
                f"{progress_text(done.done, done.total, done.message)} "
                f"(reported {_when(done.updated_at)})",
            )
        )
    if links is not None and (links.parents or links.children):
        mode = f" (on_parent_failure={links.on_parent_failure})" if links.parents else ""
        lines.append(("parents", (" ".join(links.parents) or "-") + mode))
        lines.append(("children", " ".join(links.children) or "-"))
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


def _progress_dict(progress: Progress | None) -> dict[str, Any] | None:
    """A task's latest progress for `sitq status --json` (None before any report)."""
    if progress is None:
        return None
    return {
        "done": progress.done,
        "total": progress.total,
        "message": progress.message,
        "updated_at": progress.updated_at,
    }


async def _note_unused_queue(tasks: TaskQueue, queue: str) -> None:
    """A note on stderr when no task and no worker has used ``queue`` (likely a
    typo), naming the queues that are known. Workers first (a small table); the
    tasks' queues (the grouped count `sitq status` reads) only when no worker
    serves it."""
    known = {name for worker in await tasks.workers() for name in worker.queues}
    if queue not in known:
        counts, _ = await tasks.task_counts()
        known.update(name for name, _ in counts)
    if queue not in known:
        names = ", ".join(sorted(known)) or "none"
        note = f"note: no task or worker has used queue {queue!r} (known queues: {names})"
        click.echo(terminal_safe(note), err=True)


@click.command()
@db_option
@click.argument("task_id", required=False)
@click.option("--failed", "all_failed", is_flag=True, help="Retry every failed task.")
@click.option("--queue", default=None, help="With --failed: only this queue.")
def retry(db: str, task_id: str | None, all_failed: bool, queue: str | None) -> None:
    """Queue a failed or cancelled task again (or every failed task with --failed)."""
    if bool(task_id) == all_failed:
        raise click.UsageError("give either a TASK_ID or --failed")

    async def requeue(tasks: TaskQueue) -> None:
        if all_failed:
            count = await tasks.retry_failed(queue)
            click.echo(f"queued {count} task(s) again")
            if queue and not count:  # nothing retried: say so if the name is likely a typo
                await _note_unused_queue(tasks, queue)
        elif await tasks.retry_many([task_id or ""]):
            click.echo("queued 1 task(s) again")
        elif await tasks.task_record(task_id or "", result=False) is None:
            fail(f"no task with id {task_id!r} in {db}")
        else:
            fail(f"task {task_id} is not failed or cancelled; only those can be retried")

    run_on_queue(db, requeue)


@click.command()
@db_option
@click.argument("task_id")
def cancel(db: str, task_id: str) -> None:
    """Cancel a queued task, or ask the worker holding a task to stop it.

    A task a worker has claimed but not started (it reads queued) is cancelled by
    that worker at once, unless it starts first: then it is stopped as it runs."""

    async def do_cancel(tasks: TaskQueue) -> None:
        try:
            outcome = await tasks.request_cancel(task_id)
        except TaskNotFound:
            fail(f"no task with id {task_id!r} in {db}")
        # Held, started or not: its worker, woken, may have cancelled it already;
        # finished: say how, so "already cancelled" is not read as a failure.
        record = await tasks.task_record(task_id, result=False)
        status = record.status if record else None
        if outcome is CancelOutcome.CANCELLED or (
            outcome is CancelOutcome.REQUESTED and status == TaskStatus.CANCELLED.value
        ):
            click.echo(f"task {task_id} cancelled")
        elif outcome is CancelOutcome.REQUESTED and record and record.claimed and record.worker_id:
            click.echo(
                f"task {task_id} is held by worker {terminal_safe(record.worker_id)}, not "
                "started: cancelled unless it starts first (then its worker stops it)"
            )
        elif outcome is CancelOutcome.REQUESTED:
            click.echo(f"task {task_id} is running: its worker was asked to stop it")
        elif status == TaskStatus.CANCELLED.value:
            click.echo(f"task {task_id} was already cancelled")
        else:
            how = f" as {status}" if status else ""
            fail(f"task {task_id} has already finished{how}; nothing to cancel")

    run_on_queue(db, do_cancel)


@click.command()
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
    started = time.monotonic()
    count = run_on_queue(db, lambda tasks: tasks.purge(chosen, queue=queue, older_than=older_than))
    click.echo(f"deleted {count} task(s) in {time.monotonic() - started:.2f}s")


@click.command()
@db_option
@click.argument("queue")
def pause(db: str, queue: str) -> None:
    """Stop workers taking tasks from QUEUE (running ones finish; enqueue still works)."""

    async def act(tasks: TaskQueue) -> None:
        await tasks.pause(queue)
        click.echo(f"paused queue {queue!r}; `sitq resume {queue}` to undo")
        await _note_unused_queue(tasks, queue)

    run_on_queue(db, act)


@click.command()
@db_option
@click.argument("queue")
def resume(db: str, queue: str) -> None:
    """Let workers take tasks from QUEUE again."""
    was_paused = run_on_queue(db, lambda tasks: tasks.resume(queue))
    click.echo(f"resumed queue {queue!r}" if was_paused else f"queue {queue!r} was not paused")


#: What ``sitq.cli`` adds to the ``sitq`` group.
COMMANDS = (status, inspect, retry, cancel, purge, pause, resume)
