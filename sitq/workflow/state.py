"""Where a workflow run's state lives: in the sitq database, next to the tasks.

The run, each step and each item (status, result, error, attempts) are stored
through :class:`sitq.workflow.store.WorkflowStore` (on the queue's database), so ``--resume`` and
``sitq workflow status`` work wherever the database is reachable (an SQLite
file or PostgreSQL), and a dashboard can list runs. Every change (an item
started, an attempt, a task id, an item finished, a step or run ending) is
committed when its call returns, so a run killed at any moment leaves a state
``--resume`` can continue from: what was recorded succeeded is never run again.

Values (params, a step's items, results) are stored with the queue's
serializer, as task results are: loading them can run code, so only load runs
from a database you trust (or sign with ``SignedSerializer``). A signing
serializer signs each value bound to where it is stored (its run, step and item
index, see :func:`value_binding`), so a value copied into another run, step or
item in the database is refused unread, as a task's payload copied between rows is.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sitq import TaskQueue
from sitq.errors import PayloadRejected
from sitq.serialization import ACCEPT_UNBOUND_ENV, Binding, bound_dumps, bound_loads
from sitq.workflow.errors import RunNotFound, WorkflowError
from sitq.workflow.kinds import ItemOutcome
from sitq.workflow.store import (
    NewWorkflowRun,
    WorkflowItemRecord,
    WorkflowRunRecord,
    WorkflowStepRecord,
    WorkflowStore,
)

PREVIEW_CHARS = 300
#: Seconds a running run's lease lasts without a heartbeat: another process may
#: resume it only once its lease is this old (or with ``--force``).
RUN_LEASE = 60.0
#: Seconds between a running run's heartbeats (renewals of its lease).
HEARTBEAT_INTERVAL = 10.0

#: A begun step as stored (without its items and result; see StateStore.step_items).
StepRecord = WorkflowStepRecord
#: An item of a step as stored.
ItemRecord = WorkflowItemRecord


def preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """A repr of ``value`` cut at ``limit`` characters, for showing a value without
    loading it. Lists, tuples, dicts and strings are written only as far as the limit,
    so a huge value (or one that YAML aliases repeat exponentially) costs no more
    than its first ``limit`` characters."""
    parts: list[str] = []
    room = [limit + 1]  # one more than shown, to know whether it was cut

    def emit(text: str) -> bool:
        parts.append(text[: room[0]])
        room[0] -= len(text)
        return room[0] <= 0

    def walk(item: Any, depth: int) -> bool:
        """Write ``item``; True once the limit is reached."""
        kind = type(item).__repr__
        if depth > _PREVIEW_DEPTH and kind in _CONTAINERS:
            return emit("...")
        if kind is list.__repr__ or kind is tuple.__repr__:
            is_list = kind is list.__repr__
            if emit("[" if is_list else "("):
                return True
            for n, element in enumerate(item):
                if (n and emit(", ")) or walk(element, depth + 1):
                    return True
            return emit("]" if is_list else ("," if len(item) == 1 else "") + ")")
        if kind is dict.__repr__:
            if emit("{"):
                return True
            for n, (key, element) in enumerate(item.items()):
                if (n and emit(", ")) or walk(key, depth + 1) or emit(": "):
                    return True
                if walk(element, depth + 1):
                    return True
            return emit("}")
        if isinstance(item, str | bytes):
            return emit(repr(item[: room[0]]))
        return emit(repr(item))

    if not walk(value, 0):
        return "".join(parts)
    return "".join(parts)[:limit] + "... (truncated)"


_CONTAINERS = (list.__repr__, tuple.__repr__, dict.__repr__)


def value_binding(kind: str, run_id: str, step: str = "", index: int | None = None) -> Binding:
    """What a stored workflow value is signed for: its kind (``params``, ``items``,
    ``step-result`` or ``item-result``), run, step and item index, so that a signed
    value is valid only where it was written."""
    return ("workflow-" + kind, run_id, step, "" if index is None else str(index))


def _where(binding: Binding) -> str:
    """The value a binding names, for messages."""
    kind, run_id, step, index = binding
    what = {
        "workflow-params": "the params",
        "workflow-items": f"the items of step {step!r}",
        "workflow-step-result": f"the result of step {step!r}",
        "workflow-item-result": f"the result of item {index} of step {step!r}",
    }.get(kind, "a value")
    return f"{what} of run {run_id}"


#: Containers nested deeper than this show as ``...`` (a deep value needs no stack).
_PREVIEW_DEPTH = 50


@dataclass(frozen=True)
class RunRecord:
    """A run as stored (its params are loaded by :meth:`StateStore.params_of`)."""

    id: str
    source: str
    name: str | None
    text: str
    params_preview: str
    status: str
    error: str | None
    host: str
    pid: int
    created_at: float
    updated_at: float
    finished_at: float | None
    params_blob: bytes

    @classmethod
    def of(cls, record: WorkflowRunRecord) -> RunRecord:
        """The run of a stored record."""
        return cls(
            id=record.id,
            source=record.source,
            name=record.name,
            text=record.text,
            params_preview=record.params_preview,
            status=record.status,
            error=record.error,
            host=record.host,
            pid=record.pid,
            created_at=record.created_at,
            updated_at=record.updated_at,
            finished_at=record.finished_at,
            params_blob=record.params,
        )

    def process_alive(self) -> bool | None:
        """Whether the process that runs it is alive (None when it ran on another host)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def interrupted(self, now: float, lease: float = RUN_LEASE) -> str | None:
        """Why a run recorded as running is not running any more, or None if it may
        be: on this host, its process is gone; on another host (whose processes
        cannot be looked at), its lease expired: no heartbeat for ``lease`` seconds
        by the database clock ``now``."""
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


class StateStore:
    """The runs, steps and items of workflows, in the database of ``queue`` (connected;
    the caller closes it)."""

    def __init__(self, queue: TaskQueue) -> None:
        self.queue = queue
        self._serializer = queue.serializer
        self._store: WorkflowStore | None = None

    @property
    def store(self) -> WorkflowStore:
        """The workflow tables of the queue's database (made at first use: the
        queue may connect after this is built)."""
        if self._store is None:
            self._store = WorkflowStore.of(self.queue)
        return self._store

    @property
    def where(self) -> str:
        """The database, for messages (never includes secrets)."""
        return self.queue.describe()

    def _dumps(self, value: Any, binding: Binding) -> bytes | None:
        try:
            return bound_dumps(self._serializer, value, binding)
        except Exception:
            return None  # kept as a preview only; a resumed run sees None

    def _loads(self, blob: bytes | None, binding: Binding) -> Any:
        """Load a stored value, verified for ``binding`` when the serializer signs.

        Values signed before they were bound (bound to nothing) are accepted only
        while ``accept_unbound`` ($SITQ_ACCEPT_UNBOUND_SIGNATURES) is on, as old task
        payloads are: without it they are refused like a copied value."""
        if blob is None:
            return None
        try:
            return bound_loads(self._serializer, blob, binding)
        except PayloadRejected as exc:
            if getattr(self._serializer, "accept_unbound", False):
                try:
                    return bound_loads(self._serializer, blob, ())
                except PayloadRejected:
                    pass
            if "signature does not match" not in str(exc):
                raise PayloadRejected(f"refused {_where(binding)}: {exc}") from None
            raise PayloadRejected(
                f"refused {_where(binding)}: its signature does not match it, so it was "
                "copied from another run, step or item, or altered in the database; it was "
                "not deserialized. Find out who else writes the database, and start a new "
                "run. A run recorded before sitq bound workflow values to their run, step "
                f"and item is refused the same way: to resume one, set ${ACCEPT_UNBOUND_ENV}=1 "
                "until it has finished"
            ) from None

    # -- runs -------------------------------------------------------------------------

    async def create_run(
        self, run_id: str, source: str, name: str | None, text: str, params: dict[str, Any]
    ) -> None:
        """Record a new run, owned by this process."""
        blob = bound_dumps(self._serializer, params, value_binding("params", run_id))
        run = NewWorkflowRun(
            run_id, source, name, text, blob, preview(params), socket.gethostname(), os.getpid()
        )
        if not await self.store.create_workflow_run(run):
            raise WorkflowError(f"a workflow run {run_id!r} exists already in {self.where}")

    async def run(self, run_id: str) -> RunRecord:
        """The run ``run_id``; RunNotFound if there is none."""
        record = await self.store.get_workflow_run(run_id)
        if record is None:
            raise RunNotFound(run_id, self.where)
        return RunRecord.of(record)

    async def runs(self, limit: int = 50) -> list[RunRecord]:
        """The most recent runs, newest first."""
        return [RunRecord.of(r) for r in await self.store.list_workflow_runs(limit)]

    def params_of(self, record: RunRecord) -> dict[str, Any]:
        """A run's params (deserialized)."""
        return self._loads(record.params_blob, value_binding("params", record.id)) or {}

    async def take_over(
        self,
        run_id: str,
        *,
        force: bool = False,
        dead_owner: tuple[str, int] | None = None,
        lease: float = RUN_LEASE,
    ) -> None:
        """Own a run in this process (for a resume): only if it is not running, its
        owner is ``dead_owner`` (known gone), or its lease expired, unless ``force``;
        WorkflowError if another process holds it."""
        if await self.store.take_over_workflow_run(
            run_id,
            socket.gethostname(),
            os.getpid(),
            stale_after=None if force else lease,
            dead_owner=dead_owner,
        ):
            return
        record = await self.run(run_id)  # RunNotFound if there is none
        age = self.store.session.now() - record.updated_at
        raise WorkflowError(
            f"run {run_id} is still running (process {record.pid} on {record.host}, last "
            f"heard of {age:.0f}s ago; its lease lasts {lease:.0f}s): wait for it to end, "
            "or pass --force (force=True) if that process is gone"
        )

    async def heartbeat(self, run_id: str) -> bool:
        """Renew this process's lease on a run; False if another process took it."""
        return await self.store.heartbeat_workflow_run(run_id, socket.gethostname(), os.getpid())

    async def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        """Record how the run ended."""
        await self.store.update_workflow_run(run_id, status, error)

    # -- steps ------------------------------------------------------------------------

    async def steps(self, run_id: str) -> list[StepRecord]:
        """The run's steps that have started, in order."""
        return await self.store.list_workflow_steps(run_id)

    async def step(self, run_id: str, name: str) -> StepRecord | None:
        """One step of the run, or None if it has not started."""
        return next((s for s in await self.steps(run_id) if s.name == name), None)

    async def step_result(self, run_id: str, name: str) -> Any:
        """A finished step's result (deserialized)."""
        record = await self.store.get_workflow_step(run_id, name)
        if record is None:
            return None
        return self._loads(record.result, value_binding("step-result", run_id, name))

    async def step_items(self, run_id: str, name: str) -> list[Any] | None:
        """The items a started step runs over (fixed when it first started); None when
        they never rendered (the step failed before it had items)."""
        record = await self.store.get_workflow_step(run_id, name)
        if record is None or record.items is None:
            return None
        items = self._loads(record.items, value_binding("items", run_id, name))
        return list(items) if isinstance(items, list | tuple) else None

    async def begin_step(
        self, run_id: str, name: str, position: int, items: Sequence[Any] | None, has_items: bool
    ) -> None:
        """Record that a step starts over ``items``, all pending (one transaction).
        ``items`` None records a step whose items could not be rendered: it has none,
        and a resume renders them again."""
        previews = [preview(item) if has_items else None for item in items or []]
        # Items must load again on resume: one that cannot be stored fails the step.
        try:
            blob = bound_dumps(
                self._serializer,
                None if items is None else list(items),
                value_binding("items", run_id, name),
            )
        except Exception as exc:
            raise WorkflowError(
                f"step {name!r}: its items cannot be stored for a resume ({exc})"
            ) from exc
        await self.store.begin_workflow_step(run_id, name, position, blob, previews, has_items)

    async def reset_step(self, run_id: str, name: str) -> None:
        """Forget a begun step and its items, so that it begins again from scratch."""
        await self.store.reset_workflow_step(run_id, name)

    async def restart_step(self, run_id: str, name: str) -> None:
        """Mark a step that had started before as running again."""
        await self.store.update_workflow_step(run_id, name, "running")

    async def finish_step(
        self, run_id: str, name: str, status: str, result: Any, error: str | None = None
    ) -> None:
        """Record how a step ended and its result."""
        await self.store.update_workflow_step(
            run_id,
            name,
            status,
            self._dumps(result, value_binding("step-result", run_id, name)),
            preview(result),
            error,
        )

    # -- items ------------------------------------------------------------------------

    async def items(self, run_id: str, step: str) -> list[ItemRecord]:
        """A step's items, in order."""
        return await self.store.list_workflow_items(run_id, step)

    async def item_values(self, run_id: str, step: str) -> dict[int, Any]:
        """The results of a step's succeeded items, by index."""
        records = await self.store.list_workflow_items(run_id, step, with_results=True)
        return {
            r.index: self._loads(r.result, value_binding("item-result", run_id, step, r.index))
            for r in records
            if r.status == "succeeded"
        }

    async def item_started(
        self, run_id: str, step: str, index: int, ran_on: str, attempt: int | None = None
    ) -> None:
        """An item starts (as attempt ``attempt`` when it runs here; attempts are
        counted as they begin)."""
        await self.store.workflow_item_started(run_id, step, index, ran_on, attempt)

    async def item_attempt(self, run_id: str, step: str, index: int, attempt: int) -> None:
        """Attempt number ``attempt`` of an item begins."""
        await self.store.workflow_item_attempt(run_id, step, index, attempt)

    async def item_submitted(self, run_id: str, step: str, index: int, task_id: str) -> None:
        """An item became sitq task ``task_id`` (a resume waits for it rather than rerun it)."""
        await self.store.workflow_item_submitted(run_id, step, index, task_id)

    async def item_finished(self, run_id: str, step: str, index: int, outcome: ItemOutcome) -> None:
        """Record an item's outcome."""
        await self.store.workflow_item_finished(
            run_id,
            step,
            index,
            "succeeded" if outcome.ok else "failed",
            attempts=outcome.attempts,
            result=(
                self._dumps(outcome.value, value_binding("item-result", run_id, step, index))
                if outcome.ok
                else None
            ),
            result_preview=preview(outcome.value) if outcome.ok else None,
            error=outcome.error,
            traceback=outcome.traceback,
        )
