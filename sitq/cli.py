"""The ``sitq`` command: run workers and look after the queue."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
import sys
from typing import Any

import click

from sitq import cli_operator
from sitq.commands import (
    app_serializer,
    db_option,
    fail,
    import_modules,
    import_option,
    open_database,
    run_on_queue,
)
from sitq.dashboard.cli import dashboard
from sitq.display import redact, terminal_safe
from sitq.errors import SitqError
from sitq.overview import supervised_name
from sitq.queue import TaskQueue
from sitq.serialization import CloudpickleSerializer, SignedSerializer
from sitq.supervisor import Supervisor, follow_supervisor, supervisor_pid
from sitq.worker import MAX_PREFETCH, POOLS, PREFETCH_BYTES, PREFETCH_HORIZON, Worker


class _SafeFormatter(logging.Formatter):
    """The worker's log lines without database passwords or terminal control
    characters (a log may be read on a terminal; tracebacks keep their lines)."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal_safe(redact(super().format(record)), keep_newlines=True)


class _ProcessCount(click.ParamType):
    """``--processes``: a whole number, at least 1, refused with what it means."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            count = int(value)
        except (TypeError, ValueError):
            self.fail(
                f"{value!r} is not a whole number: how many worker processes to run "
                "(1, the default, runs one worker without a supervisor)",
                param,
                ctx,
            )
        if count < 1:
            self.fail(f"{count} processes would run no worker: give 1 or more", param, ctx)
        return count


#: The packages `sitq workflow` needs from its extra (sitq[workflow]).
WORKFLOW_EXTRA = ("yaml", "jinja2", "markupsafe")


class _LazyGroup(click.Group):
    """A group whose heavier commands are imported only when asked for.

    `sitq workflow` loads Jinja2 and YAML, `sitq migrate` the migration: about a
    third of the CLI's import time, which every `sitq worker` and `sitq status`
    paid for commands it never runs.
    """

    #: name -> (module, attribute) of each command imported on first use.
    LAZY = {
        "migrate": ("sitq.cli_migrate", "migrate_command"),
        "workflow": ("sitq.workflow.cli", "workflow"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.LAZY or cmd_name in self.commands:
            return super().get_command(ctx, cmd_name)
        module, attribute = self.LAZY[cmd_name]
        try:
            command: click.Command = getattr(importlib.import_module(module), attribute)
        except ImportError as exc:
            missing = (exc.name or "").partition(".")[0]
            if cmd_name != "workflow" or missing not in WORKFLOW_EXTRA:
                raise
            # `sitq workflow` comes with its extra: without it, say what to install.
            command = _workflow_missing(missing)
        self.add_command(command, cmd_name)
        return command


def _workflow_missing(missing: str) -> click.Command:
    """A stand-in for `sitq workflow` without its extra: it says what to install."""

    @click.command(
        name="workflow", context_settings={"ignore_unknown_options": True}, add_help_option=False
    )
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def workflow(args: tuple[str, ...]) -> None:
        """Run YAML workflows (needs: pip install 'sitq[workflow]')."""
        fail(f"`sitq workflow` needs {missing}: pip install 'sitq[workflow]'")

    return workflow


@click.group(cls=_LazyGroup)
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
    f"{MAX_PREFETCH} tasks waiting, holding about {PREFETCH_BYTES // 2**20} MB of payloads "
    "at most (short tasks are claimed in batches; long ones are not hoarded).",
)
@import_option("so its tasks resolve")
@click.option(
    "--lease",
    "lease_seconds",
    type=click.FloatRange(min=0.5),
    default=30.0,
    show_default=True,
    help="Seconds before a dead worker's task runs elsewhere.",
)
@click.option(
    "--grace",
    "grace_period",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds SIGTERM waits for running tasks before releasing them.",
)
@click.option(
    "--poll-interval",
    "poll_interval",
    type=click.FloatRange(min=0, min_open=True),
    default=0.2,
    show_default=True,
    help="Longest idle wait for a wake-up before looking at the queue again. A new task "
    "wakes the worker at once, and it looks again when the next delayed task, retry or "
    "expiring lease falls due; only a task written with no wake-up waits this long.",
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
    "--processes",
    "-p",
    type=_ProcessCount(),
    default=1,
    show_default=True,
    help="Worker processes, each with its own event loop, connection and --concurrency "
    "slots. Above 1 this process supervises them: it restarts one that dies and "
    "forwards SIGTERM/SIGINT so all drain.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Check the database, its schema, the --import modules and the secret key; "
    "exit 0 if all is well (a pre-start check for service managers).",
)
# Set by a `--processes N` supervisor for its children, never by hand.
@click.option("--supervisor", "supervisor", default=None, hidden=True)
@click.pass_context
def worker(
    ctx: click.Context,
    db: str,
    imports: tuple[str, ...],
    log_level: str,
    burst: bool,
    processes: int,
    check: bool,
    supervisor: str | None,
    **options: Any,
) -> None:
    """Run a worker until SIGTERM/SIGINT (a second signal stops at once)."""
    # ``options``: the Worker's own (--concurrency, --queue, --pool, --lease, ...).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=log_level.upper(), handlers=[handler])
    if supervisor is not None:
        try:  # first: if the supervisor is gone, or goes, this child must not serve on
            follow_supervisor(supervisor_pid(supervisor))
        except SitqError as exc:
            fail(str(exc))
        options["name"] = supervised_name(supervisor, os.getpid())
    if processes > 1 and not check:
        # The supervisor checks the key and the database once, for a clear error
        # before any child starts; it imports nothing (each child does).
        app_serializer()
        open_database(db)
        _supervise(ctx, db, processes, burst)
        return
    import_modules(imports, "worker")
    # Checked in the order a start would fail: the secret key, then the database,
    # opened without creating it (a mistyped path is an error, not a new empty
    # database that the worker would then serve: `sitq init` creates one).
    serializer = app_serializer()
    where = open_database(db)
    if check:
        signed = "signed" if isinstance(serializer, SignedSerializer) else "unsigned"
        click.echo(
            f"ok: {where} (schema version current); imports: {', '.join(imports) or 'none'}; "
            f"{signed} payloads"
        )
        return
    # What is loaded by now (sitq, the app's modules) lives as long as the
    # process: the collector need not walk it again on every collection, which
    # the allocations of each task trigger (about a tenth of a no-op's cost).
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    try:
        the_worker = Worker(db, serializer, imports=imports, burst=burst, create=False, **options)
        asyncio.run(the_worker.run())
    except SitqError as exc:
        fail(str(exc))
    if burst:
        counts = the_worker.outcomes
        summary = ", ".join(f"{counts[k]} {k}" for k in ("succeeded", "failed", "cancelled"))
        click.echo(f"burst done: {summary} ({counts['retried']} retried attempts)")
        if supervisor is None:  # a supervisor's children leave it to say once
            _note_held_by_pauses(db, options["queues"])
        if counts["failed"]:
            raise SystemExit(1)


def _note_held_by_pauses(db: str, queues: tuple[str, ...]) -> None:
    """After a burst, name the ready tasks it left in paused queues, if any."""
    try:
        held = asyncio.run(_held_by_pauses(db, queues))
    except SitqError as exc:  # only a note: the summary and exit status stand
        held = f"(could not read the paused queues: {exc})"
    if held:
        click.echo(f"not run: {held}")


async def _held_by_pauses(db: str, queues: tuple[str, ...]) -> str:
    """The tasks of ``queues`` that a burst left because their queue is paused
    ("" if none): a burst ends once nothing is ready, and a paused queue's tasks
    never are."""
    async with TaskQueue(db, CloudpickleSerializer(), create=False) as queue:
        paused = set(await queue.paused()) & set(queues)
        if not paused:
            return ""
        view = await queue.overview(failures=0, counts=False)
    waiting = {name: view.queues[name].ready for name in sorted(paused) if name in view.queues}
    return "; ".join(
        f"{ready} ready task(s) in paused queue {name!r} (`sitq resume {name}`)"
        for name, ready in waiting.items()
        if ready
    )


def _supervise(ctx: click.Context, db: str, processes: int, burst: bool) -> None:
    """Run ``processes`` children of this same `sitq worker` command line (every
    option but --processes), the database passed in $SITQ_DB, never on their
    command line (a URL may hold a password, and `ps` shows command lines)."""
    command = [sys.executable, "-m", "sitq.cli", "worker"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if (
            not isinstance(param, click.Option)
            or param.name in ("db", "processes", "check", "supervisor")
            or value is None
            or value is False
        ):
            continue
        flag = param.opts[0]
        if param.is_flag:
            command.append(flag)
        elif param.multiple:
            command += [item for v in value for item in (flag, str(v))]
        else:
            command += [flag, str(value)]
    try:
        status = Supervisor(
            command, processes, env={**os.environ, "SITQ_DB": db}, burst=burst
        ).run()
    except SitqError as exc:
        fail(str(exc))
    if burst:
        _note_held_by_pauses(db, ctx.params["queues"])
    if status:
        raise SystemExit(status)


@main.command()
@db_option
@click.option(
    "--alongside",
    is_flag=True,
    help="Add sitq's tables to a SQLite file that already holds other tables (your "
    "application's database), to enqueue in its transactions (queue.using).",
)
def init(db: str, alongside: bool) -> None:
    """Create the database (owner-only) if it does not exist."""
    run_on_queue(db, lambda queue: asyncio.sleep(0), create=True, alongside=alongside)
    click.echo(f"sitq database ready at {redact(db)}")


# Importing it loads no web framework: without the extra it says what to install.
main.add_command(dashboard)
for _command in cli_operator.COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="sitq")
