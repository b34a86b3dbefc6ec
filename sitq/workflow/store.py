"""Where workflow runs live: :class:`WorkflowStore`, over the queue's own database.

A run, its steps, and each step's items with status, result, error and
attempts. Values (params, a step's items, results) are bytes serialized by the
layer above (:mod:`sitq.workflow.state`); previews are short texts to show
without loading them. Every call is committed when it returns; each item change
is one statement (group-committed with the others of the moment where the
backend can: ``StoreSession.write_soon``).

The SQL is in ``sql/sqlite.sql`` and ``sql/postgres.sql``, run through the queue's
:class:`~sitq.store.StoreSession`; each backend's schema migration makes the tables.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from sitq import sqlfiles
from sitq.errors import ConfigurationError
from sitq.store import StoreSession, StoreTransaction
from sitq.workflow.names import is_whole

if TYPE_CHECKING:
    from sitq.queue import TaskQueue

_SQL = sqlfiles.load_dialects("sitq.workflow")
#: Seconds a running run's lease lasts without a heartbeat: another process may
#: resume it only once its lease is this old (or with ``--force``).
RUN_LEASE = 60.0


def process_alive(host: str, pid: int) -> bool | None:
    """Whether process ``pid`` of ``host`` is alive; None when it is on another host
    (whose processes cannot be looked at)."""
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        pass  # it exists but is not ours, or the pid is not one: not known to be gone
    return True


class NewWorkflowRun(NamedTuple):
    """A workflow run to record: its id, the file it came from (path, ``name:``,
    text), its params (bytes and a preview), and the host and pid that run it."""

    id: str
    source: str
    name: str | None
    text: str
    params: bytes
    params_preview: str
    host: str
    pid: int


@dataclass(frozen=True)
class WorkflowRunRecord:
    """A workflow run as stored. ``status``: running, succeeded, partial, failed or
    interrupted (the layer above names them); ``finished_at`` None while running."""

    id: str
    source: str
    name: str | None
    text: str
    params: bytes
    params_preview: str
    status: str
    error: str | None
    host: str
    pid: int
    created_at: float
    updated_at: float
    finished_at: float | None

    def process_alive(self) -> bool | None:
        """Whether the process that runs it is alive (None when it ran on another host)."""
        return process_alive(self.host, self.pid)

    def interrupted(self, now: float, lease: float = RUN_LEASE) -> str | None:
        """Why a run recorded as running is not running any more, or None if it may
        be: on this host, its process is gone; on another host, its lease expired:
        no heartbeat for ``lease`` seconds by the database clock ``now``."""
        if self.status != "running":
            return None
        alive = self.process_alive()
        if alive is False:
            return "its process is gone"
        if alive is None and now - self.updated_at > lease:
            return (
                f"no heartbeat from process {self.pid} on {self.host} for "
                f"{now - self.updated_at:.0f}s; its lease lasts {lease:.0f}s"
            )
        return None


@dataclass(frozen=True)
class WorkflowStepRecord:
    """A begun step of a workflow run. ``items`` and ``result`` (bytes) are loaded
    only by ``get_workflow_step``."""

    name: str
    position: int
    status: str
    total: int
    has_items: bool
    result_preview: str | None
    error: str | None
    started_at: float
    finished_at: float | None
    items: bytes | None = None
    result: bytes | None = None


@dataclass(frozen=True)
class WorkflowItemRecord:
    """One item of a step: pending, running, succeeded or failed. ``result`` (bytes)
    is loaded only when asked for."""

    index: int
    item_preview: str | None
    status: str
    attempts: int
    result_preview: str | None
    error: str | None
    traceback: str | None
    task_id: str | None
    ran_on: str | None
    started_at: float | None
    finished_at: float | None
    result: bytes | None = None


class WorkflowStore:
    """Workflow runs in the database of ``session`` (see the module docstring).

    Build one with :meth:`of` from a connected :class:`~sitq.TaskQueue`.
    """

    def __init__(self, session: StoreSession) -> None:
        self.session = session
        self._sql = _SQL[session.dialect]

    @classmethod
    def of(cls, queue: TaskQueue) -> WorkflowStore:
        """The store of ``queue``'s database."""
        return cls(queue.store_session())

    # -- runs -------------------------------------------------------------------

    async def create_workflow_run(self, run: NewWorkflowRun) -> bool:
        """Record a new run, status 'running', created now; False (and no change) if
        a run with this id exists."""
        params = (*run, self.session.now())
        return await self.session.execute(self._sql["create_run"], params) == 1

    async def get_workflow_run(self, run_id: str) -> WorkflowRunRecord | None:
        """The run, or None if there is no such run."""
        rows = await self.session.fetch(self._sql["get_run"], (run_id,))
        return _run(rows[0]) if rows else None

    async def list_workflow_runs(self, limit: int = 50) -> list[WorkflowRunRecord]:
        """The ``limit`` most recently created runs, newest first."""
        if not is_whole(limit):
            raise ConfigurationError(f"limit must be an int >= 1, got {limit!r}")
        return [_run(row) for row in await self.session.fetch(self._sql["list_runs"], (limit,))]

    async def update_workflow_run(
        self,
        run_id: str,
        status: str,
        error: str | None = None,
        *,
        host: str | None = None,
        pid: int | None = None,
    ) -> bool:
        """Set the run's status and error (its ``finished_at`` is now, or None when
        ``status`` is 'running'); ``host`` and ``pid``, if given, name its new owner.
        False if there is no such run."""
        params = (run_id, status, error, host, pid, self.session.now())
        return bool(await self.session.execute(self._sql["update_run"], params))

    async def heartbeat_workflow_run(self, run_id: str, host: str, pid: int) -> bool:
        """Renew the lease of a running run owned by ``host`` and ``pid`` (its
        ``updated_at`` becomes now); False if it is not running or has another owner."""
        params = (run_id, host, pid, self.session.now())
        return bool(await self.session.execute(self._sql["heartbeat_run"], params))

    async def take_over_workflow_run(
        self,
        run_id: str,
        host: str,
        pid: int,
        *,
        stale_after: float | None,
        dead_owner: tuple[str, int] | None = None,
    ) -> bool:
        """Make ``host``/``pid`` the owner of the run, status 'running' (error and
        finish cleared), in one compare-and-set: only if it is not running, or its
        lease is older than ``stale_after`` seconds, or its owner is ``dead_owner``
        (known gone); ``stale_after`` None takes it whatever its state. False (and
        no change) otherwise, or if there is no such run."""
        now = self.session.now()
        dead_host, dead_pid = dead_owner or (None, None)
        params = (run_id, host, pid, now, stale_after is None, now - (stale_after or 0.0),
                  dead_host, dead_pid)  # fmt: skip
        return bool(await self.session.execute(self._sql["take_over_run"], params))

    # -- steps ------------------------------------------------------------------

    async def begin_workflow_step(
        self,
        run_id: str,
        name: str,
        position: int,
        items: bytes,
        item_previews: Sequence[str | None],
        has_items: bool,
    ) -> bool:
        """Record that a step starts (status 'running') over ``items``, with one
        pending item per preview (indexes from 0), in one transaction. False (and no
        change) if the step was begun before."""
        sql = self._sql
        step = (run_id, name, position, len(item_previews), has_items, items, self.session.now())
        previews = self.session.array(item_previews)

        async def body(tx: StoreTransaction) -> bool:
            if not await tx.execute(sql["begin_step"], step):
                return False
            await tx.execute(sql["insert_items"], (run_id, name, previews))
            return True

        return await self.session.transaction(body)

    async def update_workflow_step(
        self,
        run_id: str,
        name: str,
        status: str,
        result: bytes | None = None,
        result_preview: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Set the step's status, result and error (its ``finished_at`` is now, or
        None when ``status`` is 'running'); False if there is no such step."""
        params = (run_id, name, status, result, result_preview, error, self.session.now())
        return bool(await self.session.execute(self._sql["update_step"], params))

    async def list_workflow_steps(self, run_id: str) -> list[WorkflowStepRecord]:
        """The run's begun steps by position, without their items and result bytes."""
        rows = await self.session.fetch(self._sql["list_steps"], (run_id,))
        return [_step(row) for row in rows]

    async def get_workflow_step(self, run_id: str, name: str) -> WorkflowStepRecord | None:
        """One step with its items and result bytes, or None if it has not begun."""
        rows = await self.session.fetch(self._sql["get_step"], (run_id, name))
        return _step(rows[0]) if rows else None

    async def reset_workflow_step(self, run_id: str, name: str) -> bool:
        """Forget a begun step and its items (one transaction), so that it can be
        begun again over new items; False if it had not begun."""
        sql = self._sql

        async def body(tx: StoreTransaction) -> bool:
            await tx.execute(sql["delete_step_items"], (run_id, name))
            return bool(await tx.execute(sql["delete_step"], (run_id, name)))

        return await self.session.transaction(body)

    # -- items ------------------------------------------------------------------

    async def list_workflow_items(
        self, run_id: str, step: str, *, with_results: bool = False
    ) -> list[WorkflowItemRecord]:
        """The step's items by index; their result bytes only ``with_results``."""
        rows = await self.session.fetch(self._sql["list_items"], (run_id, step, with_results))
        return [WorkflowItemRecord(*row) for row in rows]

    async def workflow_item_started(
        self, run_id: str, step: str, index: int, ran_on: str, attempt: int | None = None
    ) -> None:
        """The item starts on ``ran_on``: status 'running', started now, its previous
        error and finish cleared; ``attempt``, if given, is its attempt number now
        (else attempts stay until an attempt or the finish is recorded)."""
        params = (run_id, step, index, ran_on, self.session.now(), attempt)
        await self.session.write_soon(self._sql["item_started"], params)

    async def workflow_item_attempt(self, run_id: str, step: str, index: int, attempt: int) -> None:
        """Attempt number ``attempt`` of the item begins."""
        params = (run_id, step, index, attempt)
        await self.session.write_soon(self._sql["item_attempt"], params)

    async def workflow_item_submitted(
        self, run_id: str, step: str, index: int, task_id: str
    ) -> None:
        """The item became sitq task ``task_id``."""
        params = (run_id, step, index, task_id)
        await self.session.write_soon(self._sql["item_submitted"], params)

    async def workflow_item_finished(
        self,
        run_id: str,
        step: str,
        index: int,
        status: str,
        *,
        attempts: int,
        result: bytes | None = None,
        result_preview: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> None:
        """The item ended (``status`` succeeded or failed) after ``attempts``
        attempts, finished now."""
        params = (run_id, step, index, status, attempts, result, result_preview, error,
                  traceback, self.session.now())  # fmt: skip
        await self.session.write_soon(self._sql["item_finished"], params)


def _run(row: Sequence[Any]) -> WorkflowRunRecord:
    values = list(row)
    values[4] = bytes(values[4])
    return WorkflowRunRecord(*values)


def _step(row: Sequence[Any]) -> WorkflowStepRecord:
    values = list(row)
    values[4] = bool(values[4])  # SQLite stores it as 0 or 1
    return WorkflowStepRecord(*values)
