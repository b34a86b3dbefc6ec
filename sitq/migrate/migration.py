"""Copy a sitq database to another backend, resumably, and verify the copy.

What is copied: every task (queued, delayed, waiting for parents, running under a
dead worker's lease, finished with its result or error) with all its columns,
task dependencies, named batches and their members, workflow runs with their
steps and items, schedules with their last run, limits and the recent starts
they count, and paused queues. Worker rows are not: a worker registers itself.
Pickled payloads and results are copied byte for byte and task ids are kept, so
a signed payload or result (bound to its row's id) still verifies.

How: the source is read a bounded chunk at a time (keyset: tasks in enqueue
order, ``rowid`` in SQLite and ``seq`` in PostgreSQL, so the destination assigns
its own enqueue order the same way; other tables by primary key), and each chunk
is written to the destination with insert-or-ignore by primary key in one
transaction together with the position reached. Those marks live in the
destination's ``sitq_meta`` (keys ``migrate:...``), so a migration killed at any
point continues where its last chunk committed when run again, and nothing is
doubled. At the end the counts per table and per task status are compared
(source plus what the destination held before must equal the destination).

The SQL is in ``sql/sqlite.sql`` and ``sql/postgres.sql``; it runs through each
queue's :class:`~sitq.store.StoreSession`.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from sitq import sqlfiles
from sitq.errors import NotASitqDatabase, SitqError
from sitq.queue import TaskQueue
from sitq.serialization import CloudpickleSerializer
from sitq.store import StoreSession, StoreTransaction

if TYPE_CHECKING:
    from sitq import SchemaState, WorkerRecord

_SQL = sqlfiles.load_dialects("sitq.migrate")

#: Rows read and written per transaction, by default.
DEFAULT_CHUNK = 5000

#: How often ``--wait`` looks again at the source's running tasks (seconds).
WAIT_POLL = 0.2


class MigrationError(SitqError):
    """A migration refused (nothing was changed) or a copy that does not verify."""


@dataclass(frozen=True)
class Table:
    """One table the migration copies.

    ``name`` names its queries (``read_<name>``, ``write_<name>``, ``count_<name>``);
    ``key`` is how many leading columns form the keyset cursor (0: the table is
    small and copied whole in one transaction; ``ORDER``: tasks, read in enqueue
    order with the order key as an extra first column); ``start`` is the cursor
    before the first row; ``identified``: its first column names a row a user
    would recognise (a task id, a batch id ...), checked for collisions by
    ``--into-existing``.
    """

    name: str
    table: str
    key: int
    start: tuple[Any, ...] = ()
    identified: bool = False


#: The ``key`` of the tasks table: read in enqueue order, the order key first.
ORDER = -1

#: In copy order: a batch's members after its tasks and the batch (PostgreSQL
#: checks those foreign keys), small tables last.
TABLES: tuple[Table, ...] = (
    Table("tasks", "sitq_tasks", ORDER, (0,), identified=True),
    Table("dependencies", "sitq_dependencies", 2, ("", -1)),
    Table("batches", "sitq_batches", 1, ("",), identified=True),
    Table("batch_tasks", "sitq_batch_tasks", 2, ("", -1)),
    Table("workflow_runs", "sitq_workflow_runs", 1, ("",), identified=True),
    Table("workflow_steps", "sitq_workflow_steps", 2, ("", "")),
    Table("workflow_items", "sitq_workflow_items", 3, ("", "", -1)),
    Table("schedules", "sitq_schedules", 0, identified=True),
    Table("limits", "sitq_limits", 0, identified=True),
    Table("limit_starts", "sitq_limit_starts", 0),
    Table("paused", "sitq_paused", 0, identified=True),
)

# The marks kept in the destination's sitq_meta.
_SOURCE = "migrate:source"
_STATE = "migrate:state"
_BASELINE = "migrate:baseline"
_OURS_PAUSED = "migrate:paused_by_wait"
_CURSOR = "migrate:cursor:"
_DONE = "done"


@dataclass
class MigrationReport:
    """What a migration did."""

    source: str
    destination: str
    #: Rows in the source, per table (what the destination received).
    rows: dict[str, int] = field(default_factory=dict)
    #: Source tasks per status.
    statuses: dict[str, int] = field(default_factory=dict)
    #: It continued an interrupted migration.
    resumed: bool = False
    #: It had been done and verified before: nothing was copied this time.
    already_done: bool = False
    #: Queues ``--wait`` paused on the source (they stay paused there).
    paused_by_wait: list[str] = field(default_factory=list)
    #: The source's rows were deleted after the verification.
    deleted_source: bool = False
    seconds: float = 0.0


def _q(session: StoreSession, name: str) -> str:
    return _SQL[session.dialect][name]


async def _count(session: StoreSession, table: Table) -> int:
    rows = await session.fetch(_q(session, f"count_{table.name}"))
    return int(rows[0][0])


async def _statuses(session: StoreSession) -> dict[str, int]:
    rows = await session.fetch(_q(session, "count_tasks_by_status"))
    return {str(status): int(n) for status, n in rows}


async def _counts(session: StoreSession) -> dict[str, Any]:
    counts: dict[str, Any] = {t.name: await _count(session, t) for t in TABLES}
    counts["statuses"] = await _statuses(session)
    return counts


async def _marks(session: StoreSession) -> dict[str, str]:
    return {str(k): str(v) for k, v in await session.fetch(_q(session, "read_marks"))}


def _name_workers(workers: Sequence[WorkerRecord]) -> str:
    shown = ", ".join(f"{w.id} (pid {w.pid} on {w.hostname})" for w in workers[:5])
    more = f" and {len(workers) - 5} more" if len(workers) > 5 else ""
    return shown + more


async def _write(
    tx: StoreTransaction, session: StoreSession, table: Table, rows: Sequence[Sequence[Any]]
) -> None:
    """Insert-or-ignore ``rows`` into ``table``: PostgreSQL takes one array per
    column (one statement a chunk), SQLite one row per statement (in-process calls
    in one transaction; its parameters keep each value's exact type)."""
    if not rows:
        return
    sql = _q(session, f"write_{table.name}")
    if session.dialect == "postgres":
        await tx.execute(sql, [session.array(column) for column in zip(*rows, strict=True)])
    else:
        for row in rows:
            await tx.execute(sql, row)


async def _set_mark(tx: StoreTransaction, session: StoreSession, key: str, value: str) -> None:
    await tx.execute(_q(session, "write_mark"), (key, value))


class _Migration:
    def __init__(
        self,
        source: TaskQueue,
        destination: TaskQueue,
        *,
        chunk_size: int,
        progress: bool,
    ) -> None:
        self.src_queue = source
        self.src = source.store_session()
        self.dst = destination.store_session()
        self.chunk_size = chunk_size
        self.progress = progress

    async def copy(self, marks: dict[str, str], ours_paused: set[str], total: int) -> None:
        bar = tqdm(
            total=total,
            unit="rows",
            desc="migrate",
            disable=not self.progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        try:
            for table in TABLES:
                cursor = marks.get(_CURSOR + table.name)
                if cursor == _DONE:
                    bar.update(await _count(self.src, table))
                    continue
                if table.key == 0:
                    await self._copy_whole(table, ours_paused, bar)
                else:
                    start = tuple(json.loads(cursor)) if cursor else table.start
                    await self._copy_chunks(table, start, bar)
        finally:
            bar.close()

    async def _copy_whole(self, table: Table, ours_paused: set[str], bar: tqdm[Any]) -> None:
        rows = await self.src.fetch(_q(self.src, f"read_{table.name}"))
        if table.name == "paused":  # queues --wait paused are not the user's
            rows = [row for row in rows if row[0] not in ours_paused]

        async def body(tx: StoreTransaction) -> None:
            await _write(tx, self.dst, table, rows)
            await _set_mark(tx, self.dst, _CURSOR + table.name, _DONE)

        await self.dst.transaction(body)
        bar.update(len(rows))

    async def _copy_chunks(self, table: Table, start: tuple[Any, ...], bar: tqdm[Any]) -> None:
        """Chunk after chunk from ``start``; the next chunk is read while this one is
        written (the two databases work at once)."""
        read = _q(self.src, f"read_{table.name}")
        cursor = start
        rows = await self.src.fetch(read, (*cursor, self.chunk_size))
        while True:
            last = len(rows) < self.chunk_size
            if table.key == ORDER:
                values = [row[1:] for row in rows]
                if rows:
                    cursor = (rows[-1][0],)
            else:
                values = list(rows)
                if rows:
                    cursor = tuple(rows[-1][: table.key])
            mark = _DONE if last else json.dumps(list(cursor))
            ahead = (
                None
                if last
                else asyncio.ensure_future(self.src.fetch(read, (*cursor, self.chunk_size)))
            )

            async def body(tx: StoreTransaction, values: Any = values, mark: str = mark) -> None:
                await _write(tx, self.dst, table, values)
                await _set_mark(tx, self.dst, _CURSOR + table.name, mark)

            try:
                await self.dst.transaction(body)
            except BaseException:
                if ahead is not None:
                    ahead.cancel()
                    await asyncio.gather(ahead, return_exceptions=True)
                raise
            bar.update(len(rows))
            if ahead is None:
                return
            rows = await ahead

    async def collisions(self) -> list[str]:
        """Keys of the source's identified rows that the destination holds too, and
        unique keys that live tasks hold on both sides (at most a few of them)."""
        found: list[str] = []
        checks = [(t.name, t.table) for t in TABLES if t.identified]
        for name, label in [*checks, ("unique", "unique_key")]:
            after = ""
            while len(found) < 5:
                keys = [
                    str(row[0])
                    for row in await self.src.fetch(
                        _q(self.src, f"keys_{name}"), (after, self.chunk_size)
                    )
                ]
                if not keys:
                    break
                after = keys[-1]
                hits = await self.dst.fetch(
                    _q(self.dst, f"existing_{name}"), (self.dst.array(keys),)
                )
                found += [f"{label} {row[0]!r}" for row in hits]
                if len(keys) < self.chunk_size:
                    break
        return found[:5]

    async def to_pause(self) -> set[str]:
        """The queues ``--wait`` pauses: every one the source's live workers serve or
        that has work, unless paused already (by its user)."""
        src = self.src_queue
        live = await src.live_workers()
        queues = {str(row[0]) for row in await self.src.fetch(_q(self.src, "live_queues"))}
        queues |= {q for w in live for q in w.queues}
        return queues - set(await src.paused())

    async def pause_and_wait(self, queues: set[str], say: Callable[[str], None]) -> None:
        """Pause ``queues`` on the source (so no new claims), then wait until no live
        worker holds a running task."""
        src = self.src_queue
        for queue in sorted(queues):
            await src.pause(queue)
        if queues:
            say(f"paused {len(queues)} queue(s) on the source: {', '.join(sorted(queues))}")
        said = False
        while True:
            live_ids = {w.id for w in await src.live_workers()}
            held = sum(
                int(n)
                for worker_id, n in await self.src.fetch(_q(self.src, "running_by_worker"))
                if worker_id in live_ids
            )
            if not held:
                return
            if not said:
                say(f"waiting for {held} running task(s) to finish on the source")
                said = True
            await asyncio.sleep(WAIT_POLL)


def _differences(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    lines = []
    for table in TABLES:
        if expected[table.name] != found[table.name]:
            lines.append(
                f"{table.table}: expected {expected[table.name]} rows, found {found[table.name]}"
            )
    statuses = set(expected["statuses"]) | set(found["statuses"])
    for status in sorted(statuses):
        want = expected["statuses"].get(status, 0)
        got = found["statuses"].get(status, 0)
        if want != got:
            lines.append(f"{status} tasks: expected {want}, found {got}")
    return lines


def _what_to_do(label: str, state: SchemaState, target: str) -> str:
    """What to do about one side whose schema is not this sitq's. A path is shown
    in the command to run; a URL is not (it may hold a password)."""
    if state.stored is not None and state.stored > state.current:
        return (
            f"The {label} was written by a newer sitq: upgrade sitq to a release that "
            f"knows schema version {state.stored}, then run the migration with it."
        )
    how = (
        f"`sitq status --db` with the {label}'s URL"
        if "://" in target
        else f"`sitq status --db {shlex.quote(target)}`"
    )
    return (
        f"Upgrade the {label} first: open it once with this sitq, which upgrades its "
        f"schema in place ({how}, or start a worker on it), then run the migration again."
    )


def _version_refusal(
    src: SchemaState, dst: SchemaState, source: str, destination: str
) -> str | None:
    """Why the schema versions refuse the migration, and what to do; None if they
    do not (both at this sitq's version, or a new destination)."""
    if src.up_to_date and dst.stored in (None, dst.current):
        return None
    dst_at = (
        f"is new (it would be created at version {dst.current})"
        if dst.stored is None
        else f"is at version {dst.stored}"
    )
    ours = (
        f"version {src.current}"
        if src.current == dst.current
        else f"version {src.current} on the source's backend, {dst.current} on the destination's"
    )
    todo = [
        _what_to_do(label, state, target)
        for label, state, target in (("source", src, source), ("destination", dst, destination))
        if state.stored is not None and not state.up_to_date
    ]
    return " ".join(
        [
            f"schema versions differ: the source {src.database} is at version {src.stored} "
            f"and the destination {dst.database} {dst_at}, while this sitq reads and "
            f"writes {ours}. Nothing was changed in either.",
            *todo,
        ]
    )


async def _peek(queue: TaskQueue, label: str) -> SchemaState:
    """``queue``'s schema version, unopened; a file of other tables is refused."""
    try:
        return await queue.peek_schema()
    except NotASitqDatabase as exc:
        raise MigrationError(
            f"the {label} {queue.describe()} holds tables that are not sitq's: "
            + (
                "check the source's path or URL"
                if label == "source"
                else "migrate into a new file or database, or into a sitq one"
            )
            + "; nothing was changed"
        ) from exc


async def migrate(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    wait: bool = False,
    into_existing: bool = False,
    delete_source: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    progress: bool = True,
    say: Callable[[str], None] = lambda line: None,
) -> MigrationReport:
    """Copy everything the sitq database ``source`` holds to ``destination`` (each
    a database path or URL, as ``TaskQueue`` takes; the destination is created at
    the current schema if new).

    Refused, with nothing changed in either database: when the source holds no sitq
    database; when either one's schema version is not this sitq's (both are read
    before either is opened, since opening one upgrades an older schema in place;
    a new destination is fine); while a worker on the source is alive (unless
    ``wait``: pause the source's queues, let running tasks finish, then copy; the
    queues stay paused on the source); while a worker on the destination is alive;
    or when the destination holds data (unless ``into_existing`` and no task,
    batch, workflow run, schedule, limit or paused queue of the source is there
    already, nor a unique key held by live tasks on both sides). Run again after an
    interruption, it continues; after a verified migration it does nothing.
    ``delete_source`` deletes the source's rows once the copy is verified.
    Payloads and results are copied as bytes, never unpickled.
    """
    began = time.monotonic()
    if chunk_size < 1:
        raise MigrationError(f"chunk_size must be at least 1, got {chunk_size}")
    # The payloads and results are copied as bytes, never loaded: any serializer does.
    source_queue = TaskQueue(source, CloudpickleSerializer(), create=False)
    dst_queue = TaskQueue(destination, CloudpickleSerializer())
    if source_queue.describe() == dst_queue.describe():
        raise MigrationError(f"the source and the destination are both {dst_queue.describe()}")
    # Read before either is opened: opening a database upgrades an older schema.
    src_state = await _peek(source_queue, "source")
    if src_state.stored is None:
        raise MigrationError(
            f"no sitq database at the source ({src_state.database}): check the source's "
            "path or URL; nothing was created"
        )
    dst_state = await _peek(dst_queue, "destination")
    refusal = _version_refusal(src_state, dst_state, os.fspath(source), os.fspath(destination))
    if refusal:
        raise MigrationError(refusal)
    async with source_queue:
        return await _migrate_from(
            source_queue,
            dst_queue,
            began,
            wait=wait,
            into_existing=into_existing,
            delete_source=delete_source,
            chunk_size=chunk_size,
            progress=progress,
            say=say,
        )


async def _migrate_from(
    source: TaskQueue,
    dst_queue: TaskQueue,
    began: float,
    *,
    wait: bool,
    into_existing: bool,
    delete_source: bool,
    chunk_size: int,
    progress: bool,
    say: Callable[[str], None],
) -> MigrationReport:
    """:func:`migrate` once the source is open and both versions are checked."""
    src_session = source.store_session()
    live = await source.live_workers()
    if live and not wait:
        raise MigrationError(
            f"{len(live)} worker(s) are alive on {source.describe()}: {_name_workers(live)}. "
            "Running tasks are never copied half-done: stop the workers (SIGTERM lets "
            "them finish what they run) and migrate again, or pass --wait to pause the "
            "source's queues and let running tasks finish first"
        )
    async with dst_queue:
        dst = dst_queue.store_session()
        report = MigrationReport(source=source.describe(), destination=dst_queue.describe())
        dst_live = await dst_queue.live_workers()
        if dst_live:
            raise MigrationError(
                f"{len(dst_live)} worker(s) are alive on the destination {dst.describe()}: "
                f"{_name_workers(dst_live)}; stop them until the migration is done (they "
                "would run tasks while they are copied, and the counts could not be verified)"
            )
        marks = await _marks(dst)
        if marks.get(_SOURCE) not in (None, report.source) and marks.get(_STATE) != "verified":
            raise MigrationError(
                f"{dst.describe()} holds an unfinished migration from {marks[_SOURCE]}; "
                "finish that one first (run the same `sitq migrate` again)"
            )
        same_source = marks.get(_SOURCE) == report.source
        if same_source and marks.get(_STATE) == "verified":
            report.already_done = True
            report.seconds = time.monotonic() - began
            say(f"{dst.describe()} already holds a verified migration from {report.source}")
            return report
        work = _Migration(source, dst_queue, chunk_size=chunk_size, progress=progress)
        report.resumed = same_source
        ours_paused: set[str] = set(json.loads(marks.get(_OURS_PAUSED, "[]")))
        if not report.resumed:
            baseline = await _counts(dst)
            holds = [t.table for t in TABLES if baseline[t.name]]
            if holds and not into_existing:
                raise MigrationError(
                    f"{dst.describe()} is not empty ({', '.join(holds)} hold rows); "
                    "migrate into a new database, or pass --into-existing to add the source's "
                    "rows to these (refused if any id is in both)"
                )
            if holds:
                clashes = await work.collisions()
                if clashes:
                    raise MigrationError(
                        f"--into-existing refused: {dst.describe()} already holds "
                        f"{', '.join(clashes)}, as {report.source} does (two rows cannot share an "
                        "id, nor two live tasks a unique key); nothing was copied"
                    )
        text_ids = (await src_session.fetch(_q(src_session, "text_task_ids")))[0][0]
        if text_ids and not await dst.keep_text_ids():
            raise MigrationError(
                f"{dst.describe()} keeps integer task ids and already holds tasks, but "
                f"{report.source} has text ids (made by PostgreSQL or a sitq before "
                "schema version 13), which it cannot take; migrate into a new file, "
                "which then keeps text ids; nothing was copied"
            )
        # The queues --wait pauses are recorded in the destination before they are
        # paused, so a run killed in between still knows they are not the user's.
        planned = await work.to_pause() if live else set()
        ours_paused |= planned
        report.paused_by_wait = sorted(ours_paused)
        if not report.resumed:

            async def start(tx: StoreTransaction) -> None:
                await _set_mark(tx, dst, _BASELINE, json.dumps(baseline))
                await _set_mark(tx, dst, _SOURCE, report.source)
                await _set_mark(tx, dst, _STATE, "copying")
                await _set_mark(tx, dst, _OURS_PAUSED, json.dumps(sorted(ours_paused)))
                for table in TABLES:  # a previous migration's marks start over
                    await _set_mark(tx, dst, _CURSOR + table.name, json.dumps(list(table.start)))

            await dst.transaction(start)
        else:
            await dst.execute(
                _q(dst, "write_mark"), (_OURS_PAUSED, json.dumps(sorted(ours_paused)))
            )
            baseline = json.loads((await _marks(dst))[_BASELINE])
            say(f"continuing the migration from {report.source}")
        if live:  # and wait
            await work.pause_and_wait(planned, say)

        source_counts = await _counts(src_session)
        report.rows = {t.name: source_counts[t.name] for t in TABLES}
        report.statuses = dict(source_counts["statuses"])
        await work.copy(marks if report.resumed else {}, ours_paused, sum(report.rows.values()))

        counter = (await src_session.fetch(_q(src_session, "task_counter")) or [(None,)])[0][0]
        gap = (1 << 32) + secrets.randbelow(1 << 32)

        async def recount(tx: StoreTransaction) -> None:
            # The finished tasks the copy inserted, counted (schema version 11).
            await tx.execute(_q(dst, "clear_finished_counts"))
            await tx.execute(_q(dst, "recount_finished"))
            await tx.execute(_q(dst, "advance_task_ids"), (counter, gap))

        await dst.transaction(recount)

        # Verify: what the destination held before, plus the source, is what it holds.
        source_counts = await _counts(src_session)
        paused_skipped = len(ours_paused & set(await source.paused()))
        expected: dict[str, Any] = {
            t.name: baseline[t.name] + source_counts[t.name] for t in TABLES
        }
        expected["paused"] -= paused_skipped
        expected["statuses"] = {
            status: baseline["statuses"].get(status, 0) + source_counts["statuses"].get(status, 0)
            for status in set(baseline["statuses"]) | set(source_counts["statuses"])
        }
        found = await _counts(dst)
        differences = _differences(expected, found)
        if differences:
            raise MigrationError(
                f"the copy in {dst.describe()} does not match {report.source}: "
                + "; ".join(differences)
                + ". Did something write to either database during the migration? The "
                "source is unchanged; stop what writes and run the migration again "
                "(it continues; rows already copied are kept, none doubled)"
            )
        await dst.execute(_q(dst, "write_mark"), (_STATE, "verified"))
        if delete_source:

            async def wipe(tx: StoreTransaction) -> None:
                for name in (
                    "batch_tasks",
                    "batches",
                    "dependencies",
                    "workflow_items",
                    "workflow_steps",
                    "workflow_runs",
                    "schedules",
                    "limits",
                    "limit_starts",
                    "paused",
                    "tasks",
                ):
                    await tx.execute(_q(src_session, f"delete_{name}"))

            await src_session.transaction(wipe)
            report.deleted_source = True
        report.seconds = time.monotonic() - began
        return report
