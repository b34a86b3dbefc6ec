"""Running a workflow's steps in order, item by item, recording everything as it goes.

A step has items: one (a plain step), one per element of ``for_each``, or one
per element of a batch's ``items``. A batch step splits its items into batches
of ``batch_size`` consecutive items (default 1); with ``parallel: true`` up to
``max_parallel`` batches run at once, otherwise one; a batch's items run one
after another. A ``for_each`` step runs ``max_parallel`` items at once
(default 1). Each item's start, attempts and outcome are committed to the state
store (in the sitq database), so a resumed run skips what succeeded and redoes what
failed or never finished.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sitq.workflow.errors import TemplateError, WorkflowError
from sitq.workflow.executors import ItemExecutor, LocalExecutor
from sitq.workflow.kinds import AttrDict, EnvView, ItemCall, ItemOutcome, RetryPolicy, run_item
from sitq.workflow.progress import Reporter, StepProgress
from sitq.workflow.spec import (
    StepSpec,
    TaskSpec,
    WorkflowSpec,
    code_refs,
    is_command,
    step_dependencies,
    template_strings,
)
from sitq.workflow.state import StateStore
from sitq.workflow.store import WorkflowItemRecord
from sitq.workflow.templates import analyse, render

#: Batches a step runs at once when ``parallel: true`` names no ``max_parallel``.
DEFAULT_MAX_PARALLEL = 4

_NO_ITEM = object()


@dataclass(frozen=True)
class RunSettings:
    """How a run executes, beyond the workflow file itself."""

    max_parallel: int = DEFAULT_MAX_PARALLEL
    http_base: str | None = None
    http_rewrite: tuple[tuple[str, str], ...] = ()
    cwd: str = field(default_factory=os.getcwd)


@dataclass
class StepReport:
    """How a step ended: its status, result and item counts, and its failures."""

    name: str
    status: str
    result: Any = None
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    skipped: bool = False
    outputs: str | None = None


@dataclass
class RunReport:
    """How a run ended. ``status`` is succeeded, partial (items failed under
    ``continue_on_error``) or failed; ``outputs`` maps each ``outputs:`` name to
    its step's result."""

    run_id: str
    status: str
    steps: dict[str, StepReport]
    outputs: dict[str, Any]
    executor: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when every item of every step succeeded."""
        return self.status == "succeeded"

    @property
    def failures(self) -> list[dict[str, Any]]:
        """Every failed item: ``step``, ``index``, ``item``, ``error`` (index and item
        are None for a plain step, which has no items)."""
        return [{"step": s.name, **e} for s in self.steps.values() for e in s.errors]


@functools.lru_cache(maxsize=256)
def _code_uses(code: str) -> tuple[set[str] | None, set[str] | None]:
    """The params and steps ``code`` reads by name; None for one it uses otherwise
    (then all of it is passed). Cached: callers must not change what it returns."""
    return code_refs(code, "params"), code_refs(code, "steps")


#: Shorter values of env variables are not masked in errors (they would mangle them).
MIN_SECRET_LENGTH = 4


def _templates_of(task: TaskSpec) -> tuple[dict[str, str], tuple[str, ...]]:
    """The command/url of ``task`` as written when its template reads ``env`` (errors
    quote that, not the rendered value), and the env variables its fields use (their
    values are masked in errors)."""
    shown: dict[str, str] = {}
    env: set[str] = set()
    for label, text in template_strings(task.fields, ""):
        try:
            found = analyse(text)
        except TemplateError:
            reads_env = True
        else:
            reads_env = bool(found.env) or "env" in found.dynamic
            env |= set(os.environ) if "env" in found.dynamic else found.env
        if reads_env and label in (".command", ".url"):
            shown[label[1:]] = text
    return shown, tuple(sorted(env))


def _only(values: dict[str, Any], keys: set[str] | None) -> dict[str, Any]:
    return dict(values) if keys is None else {k: values[k] for k in keys if k in values}


class Runner:
    """Runs one run of a workflow (a new one, or the rest of a resumed one)."""

    def __init__(
        self,
        spec: WorkflowSpec,
        run_id: str,
        params: dict[str, Any],
        store: StateStore,
        executor: ItemExecutor,
        reporter: Reporter,
        settings: RunSettings,
    ) -> None:
        self.spec = spec
        self.run_id = run_id
        self.params = params
        self.store = store
        self.executor = executor
        self.reporter = reporter
        self.settings = settings
        self.env = EnvView(dict(os.environ))
        self.steps_view: dict[str, AttrDict] = AttrDict()
        self.outputs: dict[str, Any] = {}
        self.reports: dict[str, StepReport] = {}
        self._stop = False
        self._error: str | None = None  # of the step that failed
        self._counts = [0, 0, 0]  # processed, failed, total of the running step
        self._deps = step_dependencies(spec)
        # Steps that ran items in this process: a later step that had finished
        # (or started) with their earlier results must begin again.
        self._ran: set[str] = set()
        self._templates: dict[int, tuple[dict[str, str], tuple[str, ...]]] = {}

    async def run(self) -> RunReport:
        """Run every step not finished yet; record and return how the run ended."""
        status, error = "succeeded", None
        for step in self.spec.steps:
            report = await self._step(step)
            if report.status == "failed":
                status = "failed"
                error = f"step {step.name!r} failed: {self._error}"
                break
            if report.status == "partial":
                status = "partial"
        await self.store.finish_run(self.run_id, status, error)
        return RunReport(
            run_id=self.run_id,
            status=status,
            steps=self.reports,
            outputs=dict(self.outputs),
            executor=self.executor.name,
            error=error,
        )

    # -- context ------------------------------------------------------------------------

    def _context(self, item: Any = _NO_ITEM, index: int | None = None, error: Any = None) -> dict:
        context: dict[str, Any] = {**self.params, **self.outputs}
        context.update(params=AttrDict(self.params), steps=self.steps_view, env=self.env)
        if item is not _NO_ITEM:
            context.update(item=item, index=index)
        if error is not None:
            context["error"] = error
        return context

    def _remember(self, step: StepSpec, report: StepReport) -> None:
        self.reports[step.name] = report
        seen = ("result", "status", "errors", "total", "succeeded", "failed")
        self.steps_view[step.name] = AttrDict({k: getattr(report, k) for k in seen})
        if step.outputs:
            self.outputs[step.outputs] = report.result

    # -- steps --------------------------------------------------------------------------

    async def _step(self, step: StepSpec) -> StepReport:
        steps = await self.store.list_workflow_steps(self.run_id)
        record = next((s for s in steps if s.name == step.name), None)
        changed = self._deps[step.name] & self._ran
        if record is not None and changed:
            self.reporter.message(
                f"{step.name}: runs again from the start, since {', '.join(sorted(changed))} "
                "ran again"
            )
            await self.store.reset_step(self.run_id, step.name)
            record = None
        if record is not None and record.status == "succeeded":
            records = await self.store.items(self.run_id, step.name, with_results=True)
            report = self._report(step, "succeeded", records, skipped=True)
            self._remember(step, report)
            self.reporter.step_skipped(step.name)
            return report
        try:
            items = None if record is None else await self.store.step_items(self.run_id, step.name)
            if record is not None and items is None:
                # Its items never rendered (the step failed first): begin it afresh.
                await self.store.reset_step(self.run_id, step.name)
                record = None
            if items is None:
                items = await self._items_of(step)
                await self.store.begin_step(
                    self.run_id, step.name, step.position, items, step.has_items
                )
            else:
                await self.store.update_workflow_step(self.run_id, step.name, "running")
        except (TemplateError, WorkflowError) as exc:
            if record is None:
                await self.store.begin_step(
                    self.run_id, step.name, step.position, None, step.has_items
                )
            self._error = str(exc)
            await self.store.finish_step(self.run_id, step.name, "failed", None, self._error)
            self.reporter.step_finished(step.name, "failed", self._error)
            report = StepReport(step.name, "failed")
            self._remember(step, report)
            return report
        if record is None:
            self._ran.add(step.name)
        await self._run_items(step, items)
        return await self._finish_step(step, items)

    async def _items_of(self, step: StepSpec) -> list[Any]:
        """The items a step runs over, fixed when it first starts."""
        if step.batch is None and step.for_each is None:
            return [None]
        raw = step.batch.items if step.batch is not None else step.for_each
        label = "items" if step.batch is not None else "for_each"
        value = render(raw, self._context(), f"step {step.name!r}, field {label!r}")
        # Only `$(...)` written as such in the file is a command: a rendered value (a
        # param, an earlier step's result) that looks like one is data, never run.
        if step.batch is not None and is_command(raw):
            return await self._command_lines(step, str(value).strip()[2:-1], str(raw).strip())
        if isinstance(value, tuple | range):
            value = list(value)
        if not isinstance(value, list):
            raise WorkflowError(
                f"step {step.name!r}: {label} must give a list, but gave "
                f"{type(value).__name__} {value!r:.80}"
            )
        return value

    async def _command_lines(self, step: StepSpec, command: str, written: str) -> list[str]:
        """``items: $(command)``: the command's non-empty output lines (an error quotes
        ``written``, the field as written, not the rendered command)."""
        proc = await asyncio.create_subprocess_shell(
            command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.settings.cwd,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise WorkflowError(
                f"step {step.name!r}: items command `{written}` exited with status "
                f"{proc.returncode}: {err.decode(errors='replace').strip()[-500:]}"
            )
        return [line.strip() for line in out.decode().splitlines() if line.strip()]

    def _limits(self, step: StepSpec) -> tuple[int, int]:
        """(batches at once, items per batch) for ``step``."""
        if step.batch is not None:
            batch = step.batch
            at_once = (batch.max_parallel or self.settings.max_parallel) if batch.parallel else 1
            return at_once, batch.batch_size or 1
        return step.max_parallel or 1, 1

    async def _run_items(self, step: StepSpec, items: Sequence[Any]) -> None:
        """Run the unfinished items: batches of consecutive items, up to ``at_once``
        batches at a time, each batch's items one after another."""
        records = await self.store.items(self.run_id, step.name)
        at_once, size = self._limits(step)
        batches: dict[int, list[Any]] = {}
        for record in records:
            if record.status != "succeeded":
                batches.setdefault(record.index // size, []).append(record)
        if batches:
            self._ran.add(step.name)
        self._stop = False
        # Kept in memory (not counted in the store per item): the items being
        # redone count as unprocessed until they finish again.
        done = sum(r.status == "succeeded" for r in records)
        self._counts = [done, 0, len(records)]
        self._report_progress(step, final=True)
        slots = asyncio.Semaphore(at_once)

        async def run_batch(batch: list[Any]) -> None:
            async with slots:
                for r in batch:
                    if self._stop:
                        return
                    await self._item(step, items[r.index], r.index, r.task_id)

        await asyncio.gather(*(run_batch(batch) for _, batch in sorted(batches.items())))

    async def _item(self, step: StepSpec, item: Any, index: int, task_id: str | None) -> None:
        task = step.item_task
        outcome = await self.executor.adopt(task_id) if task_id else None
        if outcome is None:
            outcome = await self._execute(step, task, item, index)
        await self.store.item_finished(self.run_id, step.name, index, outcome)
        self._counts[0] += 1
        self._counts[1] += not outcome.ok
        self._report_progress(step)
        if outcome.ok and task.kind == "echo":
            self.reporter.message(f"{step.name}: {outcome.value}")
        if not outcome.ok:
            if not step.continue_on_error:
                self._stop = True
            handler = step.batch.on_item_error if step.batch is not None else None
            if handler is not None:
                await self._on_item_error(step, handler, item, index, outcome)

    async def _execute(self, step: StepSpec, task: TaskSpec, item: Any, index: int) -> ItemOutcome:
        try:
            call = self._call(step, task, item, index)
        except TemplateError as exc:
            return ItemOutcome(ok=False, error=str(exc), attempts=0)
        name, run_id = step.name, self.run_id
        local = task.kind == "echo" or isinstance(self.executor, LocalExecutor)
        # An item run here starts its first attempt at once: one write for both.
        await self.store.item_started(
            run_id, name, index, "local" if local else self.executor.name, 1 if local else None
        )
        if task.kind == "echo":
            return run_item(call)
        return await self.executor.run(
            call,
            on_submitted=functools.partial(self.store.item_submitted, run_id, name, index),
            on_attempt=functools.partial(self.store.item_attempt, run_id, name, index),
        )

    def _call(
        self, step: StepSpec, task: TaskSpec, item: Any, index: int, error: Any = None
    ) -> ItemCall:
        """Render ``task``'s fields for one item; TemplateError names step and field."""
        with_item = step.has_items or error is not None
        context = self._context(item, index, error) if with_item else self._context()
        fields = {
            key: render(value, context, f"step {step.name!r}, field {key!r}")
            for key, value in task.fields.items()
        }
        namespace: dict[str, Any] = {}
        if task.kind == "python":
            # Only what the code reads travels with the item (a task holds it).
            params_used, steps_used = _code_uses(task.code) if task.code else (set(), set())
            namespace = {
                "params": AttrDict(_only(self.params, params_used)),
                "steps": AttrDict(_only(self.steps_view, steps_used)),
                "item": item if with_item else None,
                "index": index if with_item else None,
                "error": error,
            }
        cached = self._templates.get(id(task))
        if cached is None:
            cached = self._templates[id(task)] = _templates_of(task)
        shown, env_names = cached
        return ItemCall(
            step=step.name,
            index=index if step.has_items else None,
            kind=task.kind,
            fields=fields,
            shown=shown,
            secrets=tuple(
                value
                for name in env_names
                if len(value := self.env.get(name) or "") >= MIN_SECRET_LENGTH
            ),
            retry=task.retry or step.retry or RetryPolicy(),
            code=task.code,
            namespace=namespace,
            cwd=self.settings.cwd,
            http_base=self.settings.http_base,
            http_rewrite=self.settings.http_rewrite,
        )

    async def _on_item_error(
        self, step: StepSpec, handler: TaskSpec, item: Any, index: int, failed: ItemOutcome
    ) -> None:
        """Run ``on_item_error`` in this process, once for a failed item."""
        try:
            call = self._call(step, handler, item, index, error=failed.error or "failed")
        except TemplateError as exc:
            self.reporter.message(f"{step.name}: on_item_error could not run: {exc}")
            return
        outcome = (
            run_item(call) if handler.kind == "echo" else await asyncio.to_thread(run_item, call)
        )
        if not outcome.ok:
            self.reporter.message(f"{step.name}: on_item_error failed: {outcome.error}")
        elif handler.kind == "echo":
            self.reporter.message(f"{step.name}: {outcome.value}")

    def _report_progress(self, step: StepSpec, final: bool = False) -> None:
        self.reporter.progress(StepProgress(step.name, *self._counts), final=final)

    async def _finish_step(self, step: StepSpec, items: Sequence[Any]) -> StepReport:
        count = len(items)
        records = await self.store.items(self.run_id, step.name, with_results=True)
        failed = [r for r in records if r.status == "failed"]
        unfinished = [r for r in records if r.status in ("pending", "running")]
        if not failed and not unfinished:
            status = "succeeded"
        elif step.continue_on_error and not unfinished:
            status = "partial"
        else:
            status = "failed"
        error = failed[0].error if failed else None
        if failed and step.has_items:
            items_failed = f"{len(failed)} of {count} {'item' if count == 1 else 'items'} failed"
            error = f"{items_failed}; first, item {failed[0].index}: {error}"
        self._error = error
        report = self._report(step, status, records, items=items)
        await self.store.finish_step(self.run_id, step.name, status, report.result, error)
        self._report_progress(step, final=True)
        self.reporter.step_finished(step.name, status, error)
        self._remember(step, report)
        return report

    def _report(
        self,
        step: StepSpec,
        status: str,
        records: list[WorkflowItemRecord],
        skipped: bool = False,
        items: Sequence[Any] | None = None,
    ) -> StepReport:
        """How ``step`` ended, from its item ``records`` (listed with their results)."""
        values = {
            r.index: self.store.item_value(self.run_id, step.name, r)
            for r in records
            if r.status == "succeeded"
        }
        failed = [r for r in records if r.status == "failed"]
        return StepReport(
            name=step.name,
            status=status,
            result=[values.get(r.index) for r in records] if step.has_items else values.get(0),
            total=len(records),
            succeeded=len(values),
            failed=len(failed),
            errors=[
                {
                    # A plain step has one run and no item: neither index nor item.
                    "index": r.index if step.has_items else None,
                    "item": (items[r.index] if items is not None else r.item_preview)
                    if step.has_items
                    else None,
                    "error": r.error,
                }
                for r in failed
            ],
            skipped=skipped,
            outputs=step.outputs,
        )
