"""``sitq migrate SRC DST``: the command over :func:`sitq.migrate.migrate`
(``sitq.cli`` adds it to the group)."""

from __future__ import annotations

import asyncio
import os

import click

from sitq.commands import fail
from sitq.display import redact, terminal_safe
from sitq.errors import SitqError
from sitq.migrate import migrate
from sitq.migrate.migration import DEFAULT_CHUNK


def _absolute(target: str) -> str:
    """An SQLite path made absolute (a URL as it is): the destination remembers its
    source by it, so a rerun from another directory continues the same migration."""
    if not target or target == ":memory:" or "://" in target:
        return target
    return os.path.abspath(target)


def _say(line: str) -> None:
    click.echo(terminal_safe(redact(line)), err=True)


@click.command("migrate")
@click.argument("source", metavar="SRC")
@click.argument("destination", metavar="DST")
@click.option(
    "--wait",
    is_flag=True,
    help="If workers are alive on SRC: pause its queues (they stay paused there), let "
    "running tasks finish, then copy.",
)
@click.option(
    "--into-existing",
    is_flag=True,
    help="Add to a DST that holds data (refused if any id is in both).",
)
@click.option(
    "--delete-source",
    is_flag=True,
    help="Delete SRC's tasks, batches, runs, schedules, limits and pauses once the copy "
    "is verified.",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=DEFAULT_CHUNK,
    show_default=True,
    help="Rows read and written per transaction.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def migrate_command(
    source: str,
    destination: str,
    wait: bool,
    into_existing: bool,
    delete_source: bool,
    chunk_size: int,
    no_progress: bool,
) -> None:
    """Copy everything a sitq database holds from SRC to DST.

    SRC and DST are SQLite paths or postgresql:// URLs (as --db takes). Tasks in
    every state with their results, dependencies, schedules, limits, paused
    queues, named batches and workflow runs are copied; worker rows are not. DST
    is created if new. Both must be at this sitq's schema version: an older or
    newer one is refused (open an older one once with this sitq to upgrade it).
    Safe to run again after an interruption: it continues, and nothing is copied
    twice. SRC is left as it was unless --delete-source.
    """
    try:
        report = asyncio.run(
            migrate(
                _absolute(source),
                _absolute(destination),
                wait=wait,
                into_existing=into_existing,
                delete_source=delete_source,
                chunk_size=chunk_size,
                progress=not no_progress,
                say=_say,
            )
        )
    except SitqError as exc:
        fail(str(exc))
    if report.already_done:
        return
    tasks = sum(report.statuses.values())
    statuses = ", ".join(f"{n} {status}" for status, n in sorted(report.statuses.items()))
    others = ", ".join(
        f"{n} {name.replace('_', ' ')}" for name, n in report.rows.items() if name != "tasks" and n
    )
    _say(
        f"migrated {tasks} tasks ({statuses or 'none'})"
        + (f" and {others}" if others else "")
        + f" from {report.source} to {report.destination} in {report.seconds:.1f} s; verified"
    )
    if report.paused_by_wait:
        _say(
            "still paused on the source (so its workers take nothing more): "
            + ", ".join(report.paused_by_wait)
        )
    if report.deleted_source:
        _say(f"deleted the migrated rows from {report.source}")
    _say(f"next: start workers with --db pointing at {report.destination}")
