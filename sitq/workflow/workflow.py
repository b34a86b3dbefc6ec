"""The Python face: ``Workflow.from_yaml(path).run(params)`` (and ``run_async``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sitq import TaskQueue
from sitq.queue import StorageTarget
from sitq.workflow.errors import WorkflowError, WorkflowValidationError
from sitq.workflow.executors import EXECUTORS, WorkerWatch, open_executor
from sitq.workflow.lint import workflow_warnings
from sitq.workflow.loader import check_size
from sitq.workflow.names import is_whole, pairs
from sitq.workflow.parse import parse_workflow
from sitq.workflow.progress import Reporter, StepProgress
from sitq.workflow.runner import DEFAULT_MAX_PARALLEL, Runner, RunReport, RunSettings
from sitq.workflow.spec import WorkflowSpec, check_names
from sitq.workflow.state import StateStore


def new_run_id() -> str:
    """A run id that sorts by start time: ``20250131-142501-3fa2c1``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def _rewrites(value: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> tuple:
    """URL rewrites from a mapping or pairs, else from ``$SITQ_WORKFLOW_HTTP_REWRITE``
    (``FROM=TO`` entries separated by whitespace)."""
    if value is None:
        return pairs(
            os.environ.get("SITQ_WORKFLOW_HTTP_REWRITE", "").split(),
            lambda entry: WorkflowError(
                f"$SITQ_WORKFLOW_HTTP_REWRITE entry {entry!r} is not FROM=TO; separate "
                "entries with spaces"
            ),
        )
    items = value.items() if isinstance(value, Mapping) else value
    return tuple((str(a), str(b)) for a, b in items)


class Workflow:
    """A workflow read from YAML, checked and ready to run.

    ``run(params)`` validates the params and every template name first, then runs
    the steps, recording each run in the sitq database (``db``) so that
    ``run(resume=run_id)`` continues it.
    """

    def __init__(self, spec: WorkflowSpec) -> None:
        self.spec = spec
        #: Lines about things that run but likely not as meant (see sitq.workflow.lint);
        #: a run reports each through its reporter and the ``sitq.workflow`` logger.
        self.warnings: list[str] = workflow_warnings(spec)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Workflow:
        """Read and check the workflow file at ``path``."""
        try:
            # Refused before it is read: a huge file costs nothing.
            check_size(os.stat(path).st_size, str(path))
            text = Path(path).read_text()
        except OSError as exc:
            raise WorkflowValidationError(
                [f"cannot read workflow file {path}: {exc.strerror or exc}"]
            ) from None
        return cls(parse_workflow(text, str(path)))

    @classmethod
    def from_string(cls, text: str, source: str = "<string>") -> Workflow:
        """Check a workflow given as YAML text (``source`` names it in errors)."""
        return cls(parse_workflow(text, source))

    @property
    def name(self) -> str | None:
        """The workflow's ``name:``, if it has one."""
        return self.spec.name

    @property
    def step_names(self) -> list[str]:
        """The steps, in the order they run."""
        return [s.name for s in self.spec.steps]

    def validate(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Check every template name against ``params`` (over the file's defaults) and
        the environment; return the params a run would use."""
        merged = {**self.spec.params, **(params or {})}
        check_names(self.spec, merged, dict(os.environ))
        return merged

    def run(self, params: Mapping[str, Any] | None = None, **options: Any) -> RunReport:
        """Run the workflow to its end and return its RunReport (see :meth:`run_async`
        for the options). Not for use inside a running event loop: await
        ``run_async`` there."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # No queue to share: the run opens its own TaskQueue on ``db`` and
            # closes it. asyncio.run on this thread makes Ctrl-C cancel the run,
            # which then records itself interrupted, with no extra thread.
            return asyncio.run(self.run_async(params, **options))
        raise WorkflowError(
            "Workflow.run() was called inside a running event loop; use "
            "`await workflow.run_async(...)` there"
        )

    async def run_async(
        self,
        params: Mapping[str, Any] | None = None,
        *,
        resume: str | None = None,
        db: StorageTarget = None,
        executor: str = "auto",
        queue: str = "default",
        max_parallel: int = DEFAULT_MAX_PARALLEL,
        http_base: str | None = None,
        http_rewrite: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        reporter: Reporter | None = None,
        on_progress: Callable[[StepProgress], None] | None = None,
        force: bool = False,
    ) -> RunReport:
        """Run the workflow (or the rest of run ``resume``) and return its RunReport.

        :param params: the run's params, over the file's ``params:`` defaults.
        :param resume: a run id: skip its finished steps and items, redo the rest.
        :param db: the sitq database (path, URL or Backend) that records the run and
            whose workers run the items (``$SITQ_DB``, else sitq.db; created if missing).
        :param executor: ``auto`` (workers if any are alive there, else this process),
            ``workers`` or ``local``.
        :param queue: the sitq queue items are enqueued on.
        :param max_parallel: items at once for ``parallel: true`` without ``max_parallel``.
        :param http_base: base URL for relative ``http_request`` URLs
            (default ``$SITQ_WORKFLOW_HTTP_BASE``).
        :param http_rewrite: URL prefix rewrites, e.g. ``{"https://api.example.com":
            "http://127.0.0.1:8080"}`` (default ``$SITQ_WORKFLOW_HTTP_REWRITE``).
        :param reporter: receives progress and output lines; or pass ``on_progress``.
        :param force: resume run ``resume`` even if another process seems to run it
            (its lease, renewed every HEARTBEAT_INTERVAL seconds, has not expired).
        """
        if not is_whole(max_parallel):
            raise WorkflowError(f"max_parallel must be a whole number >= 1, not {max_parallel!r}")
        reporter = reporter or Reporter(on_progress)
        settings = RunSettings(
            max_parallel=max_parallel,
            http_base=http_base or os.environ.get("SITQ_WORKFLOW_HTTP_BASE") or None,
            http_rewrite=_rewrites(http_rewrite),
        )
        if executor not in EXECUTORS:
            raise WorkflowError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
        for warning in self.warnings:
            reporter.warning(warning)
        # A new run's params are checked before the database is even opened.
        run_params = self.validate(params) if resume is None else {}
        dead_owner: tuple[str, int] | None = None
        async with TaskQueue(db) as task_queue:
            store = StateStore(task_queue)
            if resume is not None:
                run_params, dead_owner = await self._resumed_params(
                    store, params, resume, reporter, force
                )
            run_id = resume or new_run_id()
            resume_command = f"`sitq workflow run {self.spec.source} --resume {run_id}`"
            watch = WorkerWatch(task_queue, reporter.message, resume_command)
            the_executor = await open_executor(executor, task_queue, queue, watch)
            try:
                if resume:
                    await store.take_over(run_id, force=force, dead_owner=dead_owner)
                else:
                    await store.create_run(
                        run_id, self.spec.source, self.spec.name, self.spec.text, run_params
                    )
                where = "on sitq workers" if the_executor.name == "workers" else "in this process"
                reporter.run_started(run_id, where, resumed=resume is not None)
                runner = Runner(
                    self.spec, run_id, run_params, store, the_executor, reporter, settings
                )
                return await _run_leased(store, run_id, runner)
            finally:
                await the_executor.close()

    async def _resumed_params(
        self,
        store: StateStore,
        params: Mapping[str, Any] | None,
        resume: str,
        reporter: Reporter,
        force: bool,
    ) -> tuple[dict[str, Any], tuple[str, int] | None]:
        """A resumed run's own params, validated (after checking it can be resumed),
        and its owner if that is known to be gone."""
        record = await store.run(resume)
        alive = record.process_alive() if record.status == "running" else None
        if alive and not force:
            raise WorkflowError(
                f"run {resume} is still running (process {record.pid} on {record.host}); "
                "wait for it to end or stop it before resuming"
            )
        dead_owner = (record.host, record.pid) if alive is False else None
        if params:
            raise WorkflowError(
                f"a resumed run keeps the params it started with ({record.params_preview}); "
                "drop --param, or start a new run"
            )
        if record.text != self.spec.text:
            reporter.message(
                f"note: {self.spec.source} changed since run {resume} started; steps and items "
                "that finished keep their results"
            )
        return self.validate(store.params_of(record)), dead_owner


async def _run_leased(store: StateStore, run_id: str, runner: Runner) -> RunReport:
    """Run ``runner``, renewing the run's lease meanwhile; if another process takes
    the run over (``--force``), the run stops here."""
    from sitq.workflow import state

    running = asyncio.ensure_future(runner.run())
    lost = False

    async def beat() -> None:
        nonlocal lost
        while not running.done():
            await asyncio.sleep(state.HEARTBEAT_INTERVAL)
            try:
                held = await store.heartbeat(run_id)
            except Exception:
                continue  # the database is away for a moment: the lease lasts a while
            if not held and not running.done():
                lost = True
                running.cancel()
                return

    beating = asyncio.ensure_future(beat())
    try:
        return await running
    except BaseException as exc:
        if lost:
            raise WorkflowError(
                f"run {run_id} was taken over by another process (--force): this one stopped"
            ) from None
        # Best effort: a run whose database went away stays 'running', which status
        # shows as interrupted once this process is gone.
        with contextlib.suppress(Exception):
            await store.finish_run(run_id, "interrupted", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        running.cancel()
        beating.cancel()
        with contextlib.suppress(BaseException):
            await beating
