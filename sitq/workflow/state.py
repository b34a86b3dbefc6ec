"""A workflow run's state as values: :class:`StateStore`, a view on WorkflowStore.

The run, each step and each item (status, result, error, attempts) are rows of
:class:`sitq.workflow.store.WorkflowStore` (on the queue's database), so
``--resume`` and ``sitq workflow status`` work wherever the database is reachable
(an SQLite file or PostgreSQL), and a dashboard can list runs. Every change is
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
from typing import Any

from sitq import TaskQueue
from sitq.errors import PayloadRejected
from sitq.serialization import ACCEPT_UNBOUND_ENV, Binding, bound_dumps, bound_loads
from sitq.workflow.errors import RunNotFound, WorkflowError
from sitq.workflow.kinds import ItemOutcome
from sitq.workflow.store import (
    RUN_LEASE,
    NewWorkflowRun,
    WorkflowItemRecord,
    WorkflowRunRecord,
    WorkflowStore,
)

PREVIEW_CHARS = 300
#: Seconds between a running run's heartbeats (renewals of its lease, RUN_LEASE).
HEARTBEAT_INTERVAL = 10.0
#: Containers nested deeper than this show as ``...`` (a deep value needs no stack).
_PREVIEW_DEPTH = 50
_CONTAINERS = (list.__repr__, tuple.__repr__, dict.__repr__)


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


class StateStore(WorkflowStore):
    """WorkflowStore on the database of ``queue`` (connected; the caller closes it),
    with the run's values stored and loaded through the queue's serializer."""

    def __init__(self, queue: TaskQueue) -> None:
        super().__init__(queue.store_session())
        self._serializer = queue.serializer
        #: The database, for messages (never includes secrets).
        self.where = queue.describe()

    # The row calls under the names the runner uses.
    items = WorkflowStore.list_workflow_items
    item_started = WorkflowStore.workflow_item_started
    item_attempt = WorkflowStore.workflow_item_attempt
    item_submitted = WorkflowStore.workflow_item_submitted
    finish_run = WorkflowStore.update_workflow_run
    reset_step = WorkflowStore.reset_workflow_step

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

    async def create_run(
        self, run_id: str, source: str, name: str | None, text: str, params: dict[str, Any]
    ) -> None:
        """Record a new run, owned by this process."""
        blob = bound_dumps(self._serializer, params, value_binding("params", run_id))
        run = NewWorkflowRun(
            run_id, source, name, text, blob, preview(params), socket.gethostname(), os.getpid()
        )
        if not await self.create_workflow_run(run):
            raise WorkflowError(f"a workflow run {run_id!r} exists already in {self.where}")

    async def run(self, run_id: str) -> WorkflowRunRecord:
        """The run ``run_id``; RunNotFound if there is none."""
        record = await self.get_workflow_run(run_id)
        if record is None:
            raise RunNotFound(run_id, self.where)
        return record

    def params_of(self, record: WorkflowRunRecord) -> dict[str, Any]:
        """A run's params (deserialized)."""
        return self._loads(record.params, value_binding("params", record.id)) or {}

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
        stale_after = None if force else lease
        me = (socket.gethostname(), os.getpid())
        if await self.take_over_workflow_run(
            run_id, *me, stale_after=stale_after, dead_owner=dead_owner
        ):
            return
        record = await self.run(run_id)  # RunNotFound if there is none
        age = self.session.now() - record.updated_at
        raise WorkflowError(
            f"run {run_id} is still running (process {record.pid} on {record.host}, last "
            f"heard of {age:.0f}s ago; its lease lasts {lease:.0f}s): wait for it to end, "
            "or pass --force (force=True) if that process is gone"
        )

    async def heartbeat(self, run_id: str) -> bool:
        """Renew this process's lease on a run; False if another process took it."""
        return await self.heartbeat_workflow_run(run_id, socket.gethostname(), os.getpid())

    async def step_result(self, run_id: str, name: str) -> Any:
        """A finished step's result (deserialized)."""
        record = await self.get_workflow_step(run_id, name)
        if record is None:
            return None
        return self._loads(record.result, value_binding("step-result", run_id, name))

    async def step_items(self, run_id: str, name: str) -> list[Any] | None:
        """The items a started step runs over (fixed when it first started); None when
        they never rendered (the step failed before it had items)."""
        record = await self.get_workflow_step(run_id, name)
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
        await self.begin_workflow_step(run_id, name, position, blob, previews, has_items)

    async def finish_step(
        self, run_id: str, name: str, status: str, result: Any, error: str | None = None
    ) -> None:
        """Record how a step ended and its result."""
        blob = self._dumps(result, value_binding("step-result", run_id, name))
        await self.update_workflow_step(run_id, name, status, blob, preview(result), error)

    def item_value(self, run_id: str, step: str, record: WorkflowItemRecord) -> Any:
        """The result of an item listed ``with_results`` (deserialized)."""
        binding = value_binding("item-result", run_id, step, record.index)
        return self._loads(record.result, binding)

    async def item_values(self, run_id: str, step: str) -> dict[int, Any]:
        """The results of a step's succeeded items, by index."""
        records = await self.items(run_id, step, with_results=True)
        return {
            r.index: self.item_value(run_id, step, r) for r in records if r.status == "succeeded"
        }

    async def item_finished(self, run_id: str, step: str, index: int, outcome: ItemOutcome) -> None:
        """Record an item's outcome."""
        binding = value_binding("item-result", run_id, step, index)
        await self.workflow_item_finished(
            run_id,
            step,
            index,
            "succeeded" if outcome.ok else "failed",
            attempts=outcome.attempts,
            result=self._dumps(outcome.value, binding) if outcome.ok else None,
            result_preview=preview(outcome.value) if outcome.ok else None,
            error=outcome.error,
            traceback=outcome.traceback,
        )
