"""Running what a Worker claimed: start prefetched tasks into free slots, run
each on the event loop, a task thread or a child process, and hand its outcome
to the writer (or the task back to the queue).

``Execution`` is that part of :class:`~sitq.worker.Worker`: a base class, not a
component, so the per-task calls stay plain method calls."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from sitq import signals, telemetry
from sitq.backends.base import (
    Backend,
    ClaimedTask,
    Lease,
    Outcome,
    ParentResult,
    UnreadablePayload,
)
from sitq.canvas import PARENT_RESULTS_HEADER
from sitq.current import CurrentTask, set_current
from sitq.errors import ParentMissing, SerializationError
from sitq.headers import encode as encode_headers
from sitq.headers import unwrap as unwrap_headers
from sitq.registry import UnknownTask, resolve
from sitq.serialization import (
    Binding,
    ModuleImportFailed,
    Serializer,
    bound_dumps,
    bound_loads,
    dumps_checked,
    loads_checked,
    payload_binding,
    result_binding,
)
from sitq.signals import TaskEvent
from sitq.task import retry_delay
from sitq.worker.calls import Reply, unpack_call
from sitq.worker.outcomes import OutcomeWriter
from sitq.worker.process_pool import ChildDied, ProcessPool
from sitq.worker.runs import (
    OUTCOME_SIGNALS,
    Running,
    TimedOut,
    end_run,
    format_tb,
    is_async,
    log_failure,
    logger,
    observed,
    outcome_name,
    with_timeout,
)
from sitq.worker.thread_slots import ThreadSlots

#: Seconds a process-pool task asked to cancel has to stop on its own (it sees
#: ``current_task().cancel_requested``) before its child process is killed. Only a
#: run a child has begun gets it: one not begun yet is cancelled at once.
PROCESS_CANCEL_GRACE = 1.0


def _unloadable(exc: SerializationError, label: str) -> Outcome:
    """The outcome of a task that ended in ``exc`` (its payload or its parents'
    results would not load, a payload was refused, or a value would not
    serialize), its error led by ``label``, with its traceback and its cause's: a
    failed import shows its own line there."""
    return Outcome("failed", error=f"{label}: {exc}", traceback=format_tb(exc))


def parent_missing(task_id: str, results: Sequence[ParentResult] | None) -> ParentMissing | None:
    """The error for a step whose parents' results include one whose row is gone
    after it finished (a parent purged before it finished passes None instead)."""
    gone = [r.id for r in results or [] if r.status == "missing"]
    if not gone:
        return None
    return ParentMissing(
        f"parent task {gone[0]} of task {task_id} is gone from the database "
        f"({len(gone)} of its {len(results or [])} parents are): it was deleted after it "
        "finished (purged) before this task ran, so its result cannot be passed. Submit "
        "the chain or chord again, and purge finished tasks only once their dependents "
        "have finished"
    )


class Execution:
    """The slots of a Worker and the runs in them. ``Worker.__init__`` sets the
    options annotated here; ``_reset`` the state of one run."""

    id: str
    backend: Backend
    serializer: Serializer
    pool: str
    concurrency: int
    lease_seconds: float
    tasks_done: int
    #: Recorded outcomes by kind: succeeded, failed, cancelled, retried.
    outcomes: dict[str, int]
    _binds: bool  # signs bound to the row: see _binding()
    _run_time: float  # running mean of task run time, seconds
    _payload_size: float  # running mean of claimed payloads' size, bytes
    _retries_due: float  # burst: a retry this worker scheduled runs by then
    _stop_requested: asyncio.Event | None
    _room: asyncio.Event | None  # set when a held task starts or leaves
    _idle: asyncio.Event | None  # set while no task is executing
    _renewed_at: float  # time.monotonic() just before the last heartbeat that worked

    def _reset(self) -> None:
        """Set the state of one run of the worker (again, for a restart)."""
        self._running: dict[str, Running] = {}  # every task held: prefetched, run, writing
        self._ready: deque[Running] = deque()  # prefetched, waiting for a slot
        self._solo: Running | None = None  # the suspect running now (see _dispatch)
        self._executing = 0
        self._threads: ThreadSlots[Running] | None = None
        self._processes: ProcessPool | None = None
        self._writer: OutcomeWriter | None = None
        self._to_release: list[Lease] = []
        self._background: set[asyncio.Future[None]] = set()

    async def _release_pending(self) -> None:
        """Hand back, in one write, every task stopped before it could finish."""
        leases, self._to_release = self._to_release, []
        if not leases:
            return
        try:
            await self.backend.release(leases)
        except Exception:
            # Their leases will expire and they will run again: nothing is lost.
            logger.exception("worker %s: could not release %d tasks", self.id, len(leases))

    def _dispatch(self) -> None:
        """Start prefetched tasks, in claim order, while slots are free.

        A task once lost with its worker (``recorded_start``, a suspect) has its
        start recorded before it runs, and at most one suspect runs at a time:
        if it is what kills workers, it alone is charged when it does so again
        (the ordinary tasks running beside it go back uncharged). Ordinary tasks
        are started past a suspect that waits for the running one to end, so
        one worker's crash does not serialize everything prefetched after it.
        """
        assert self._stop_requested and self._idle and self._writer
        now = None
        while self._ready and self._executing < self.concurrency:
            if self._stop_requested.is_set():
                return  # draining: what has not started is released instead
            running = self._next_ready()
            if running is None:
                return  # only suspects wait, behind the one running
            running.started = time.monotonic()
            if now is None:
                now = self.backend.now()
            running.started_at = now
            self._writer.started(running)  # before _start, which may end it at once
            self._executing += 1
            self._idle.clear()
            self._begin(running)

    def _next_ready(self) -> Running | None:
        """The next prefetched task to start: the first, unless it is a suspect
        while another suspect runs; then the first ordinary one (None if none)."""
        if self._solo is None:
            running = self._ready.popleft()
            if running.task.recorded_start:
                self._solo = running
            return running
        for index, running in enumerate(self._ready):
            if not running.task.recorded_start:
                del self._ready[index]
                return running
        return None

    def _begin(self, running: Running) -> None:
        """``_start``, failing the task if starting it raises."""
        try:
            self._start(running)
        except Exception as exc:
            # A defect in starting this one task must not end the claim loop
            # (which would leave every held task heartbeated forever).
            logger.exception("worker %s: could not start task %s", self.id, running.task.id)
            if not running.done:
                error = f"{type(exc).__name__} while the worker started the task: {exc}"
                self._done(running, self._failure(running.task, error, format_tb(exc)))

    def _forget(self, running: Running) -> None:
        # Only this run: a task reclaimed by this same worker (its lease expired
        # while the loop was blocked) may already be held again under a new attempt.
        if self._running.get(running.task.id) is running:
            del self._running[running.task.id]
        assert self._room is not None
        self._room.set()

    # -- running ------------------------------------------------------------

    def _start(self, running: Running) -> None:
        """Begin one task: on a thread, on the loop, or in a child process."""
        task = running.task
        running.observed = observed()
        if running.interrupt == "cancel":
            running.started_at = None  # it never ran
            self._done(running, self._interrupted(running))
            return
        if type(task.payload) is UnreadablePayload:
            error = f"SerializationError: task {task.id} ({task.func_name}): {task.payload.problem}"
            self._done(running, Outcome("failed", error=error))
            return
        if task.recorded_start and not running.start_recorded:
            # Once lost by a worker before a known start (maybe it kills its
            # worker at once): record the start first, so that a next loss counts.
            self._start_runner(running, self._record_start(running))
            return
        headers, body = unwrap_headers(task.payload)
        # What sitq.current_task() returns in the run (a small object per task).
        running.current = current = CurrentTask(task.id, task.attempts, task.queue)
        if PARENT_RESULTS_HEADER in headers:
            # A step of a composition: its parents' results are read first (a
            # storage read only such a task pays), then it starts as any other.
            self._start_runner(running, self._pass_parent_results(running, headers, body))
            return
        if running.observed:
            running.span = telemetry.start_run(
                task.id,
                task.queue,
                task.func_name,
                task.attempts,
                headers,
                (running.started_at or task.claimed_at) - task.enqueued_at,
            )
            if signals.task_started.has_receivers:
                signals.task_started.send_nowait(
                    TaskEvent(task.id, task.func_name, task.queue, task.attempts, self.id)
                )
        if self._processes is not None:
            pool = self._processes
            bindings = self._binding(task, "payload"), self._binding(task, "result")
            self._start_runner(
                running, self._run(running, lambda: pool.run(body, bindings, current))
            )
            return
        try:
            what = f"task {task.id} ({task.func_name})"
            call = loads_checked(self.serializer, body, what, self._binding(task, "payload"))
            fn, args, kwargs = unpack_call(call, what)
            fn = resolve(fn)
        except ModuleImportFailed as exc:
            # Its module failed to import here (a setting this host lacks?), as
            # with UnknownTask: retries, if the task has any, may go elsewhere.
            self._done(running, self._failure(task, f"SerializationError: {exc}", format_tb(exc)))
            return
        except SerializationError as exc:
            # Deterministic: running it again would fail the same way.
            self._done(running, _unloadable(exc, type(exc).__name__))
            return
        except UnknownTask as exc:
            # Maybe only this worker lacks the module (a deploy in progress):
            # retries, if the task has any, may reach a worker that has it.
            self._done(running, self._failure(task, f"UnknownTask: {exc}", None))
            return
        if self.pool == "auto" and is_async(fn):
            self._start_runner(running, self._run(running, lambda: fn(*args, **kwargs)))
            return
        assert self._threads is not None
        running.in_thread = True
        fn = telemetry.run_in_span(running.span, fn)
        self._threads.submit(running, fn, args, kwargs, self._binding(task, "result"), current)
        if task.timeout is not None:
            running.timer = asyncio.get_running_loop().call_later(
                task.timeout, self._abandon_thread_run, running
            )

    def _binding(self, task: ClaimedTask, label: str) -> Binding | None:
        """What the task's payload or result is signed for; None when not signing."""
        if not self._binds:
            return None
        if label == "payload":
            return payload_binding(task.id, task.func_name, task.queue)
        return result_binding(task.id, task.func_name)

    async def _record_start(self, running: Running) -> None:
        try:
            held = await self.backend.record_start(running.task.lease)
        except Exception:
            logger.exception(
                "worker %s: could not record the start of task %s; handing it back",
                self.id,
                running.task.id,
            )
            held = False
        if running.done:
            return
        if not held:
            self._done(running, None)  # release: it runs once its start can be recorded
            return
        running.runner = None
        running.start_recorded = True
        self._begin(running)

    async def _pass_parent_results(
        self, running: Running, headers: dict[str, str], body: bytes
    ) -> None:
        """Read the parents' results, in their declared order, and put them first
        among the call's arguments: the list ("list"), or the one parent's ("one").
        A parent that did not succeed (``on_parent_failure="run"``) passes None."""
        task = running.task
        try:
            links = await self.backend.task_links(task.id, with_results=True)
            missing = parent_missing(task.id, links.results if links is not None else [])
            if missing is not None:
                # Deterministic: its retries would find the parent gone as well.
                if not running.done:
                    error = f"{type(missing).__name__}: {missing}"
                    self._done(running, Outcome("failed", error=error))
                return
            values: list[Any] = []
            for record in links.results or [] if links is not None else []:
                if record.result is None:
                    values.append(None)  # did not succeed (on_parent_failure="run"), or purged
                    continue
                binding = result_binding(record.id, record.func_name) if self._binds else None
                what = f"the result of task {record.id}, a parent of task {task.id}"
                values.append(loads_checked(self.serializer, record.result, what, binding))
            what = f"task {task.id} ({task.func_name})"
            fn, args, kwargs = unpack_call(
                loads_checked(self.serializer, body, what, self._binding(task, "payload")), what
            )
            first = values if headers[PARENT_RESULTS_HEADER] == "list" else (values or [None])[0]
            call = bound_dumps(
                self.serializer, (fn, (first, *args), kwargs), self._binding(task, "payload")
            )
        except Exception as exc:
            if not running.done:
                error = f"{type(exc).__name__} while passing the parents' results: {exc}"
                self._done(running, self._failure(task, error, format_tb(exc)))
            return
        if running.done:
            return
        rest = {key: value for key, value in headers.items() if key != PARENT_RESULTS_HEADER}
        running.task = replace(task, payload=(encode_headers(rest) or b"") + call)
        running.runner = None
        self._begin(running)

    def _start_runner(self, running: Running, step: Coroutine[Any, Any, None]) -> None:
        """Run ``step`` (the run, or the record of its start) as the task's runner."""
        runner = asyncio.create_task(step, name=running.task.id)
        runner.add_done_callback(lambda _: self._runner_ended(running, runner))
        running.runner = runner

    def _runner_ended(self, running: Running, runner: asyncio.Task[None]) -> None:
        # Cancelled before its first step (or while recording the start), a runner
        # never runs the task: settle it here, so a slot is never lost.
        if running.runner is runner and not running.done:
            self._done(running, self._interrupted(running))

    async def _run(self, running: Running, make: Callable[[], Awaitable[Any]]) -> None:
        """Run an async task on the loop, or a payload in a child process."""
        task = running.task
        started = time.monotonic()
        if running.current is not None:  # this runner's own context, as for the span
            set_current(running.current)
        if running.span is not None:  # this runner's own context: spans it opens nest
            otel_context.attach(trace.set_span_in_context(running.span))
        try:
            value = await with_timeout(make(), task.timeout)
            if running.interrupt == "cancel":  # a process-pool task that stopped when asked
                outcome: Outcome | None = self._interrupted(running)
            elif self._processes is not None:
                outcome = self._outcome_from_reply(task, value)
            else:
                what = f"the return value of task {task.id} ({task.func_name})"
                data = dumps_checked(self.serializer, value, what, self._binding(task, "result"))
                outcome = Outcome("succeeded", result=data)
        except asyncio.CancelledError:
            # Cancelled by someone's cancel() unasked: the event loop is ending, so hand
            # it back (Python 3.10 cannot tell such a cancel from the task's own).
            cancelling = getattr(asyncio.current_task(), "cancelling", None)
            if running.interrupt is None and cancelling and cancelling():
                running.interrupt = "shutdown"
            if running.interrupt is None:  # the task's own code cancelled something
                outcome = self._failure(task, "CancelledError: the task was cancelled", None)
            else:
                outcome = self._interrupted(running)
        except TimedOut:
            outcome = self._timed_out(task, time.monotonic() - started)
        except SerializationError as exc:
            outcome = _unloadable(exc, "SerializationError")
        except ChildDied as exc:
            outcome = self._failure(task, f"ChildDied: {exc}", None)
        except BaseException as exc:
            outcome = self._failure(task, f"{type(exc).__name__}: {exc}", format_tb(exc))
        if not running.done:  # a stop may have given up on it and released it already
            self._done(running, outcome)

    def _thread_done(self, running: Running, reply: Reply) -> None:
        """A thread finished a call (on the loop, via ThreadSlots)."""
        if running.done:
            return  # timed out or interrupted earlier: this late reply is dropped
        self._done(running, self._outcome_from_reply(running.task, reply))

    def _abandon_thread_run(self, running: Running) -> None:
        """A thread run timed out or was interrupted, and can't be stopped: decide its
        outcome now, and give the pool a fresh thread while the stuck one runs on."""
        if running.done:
            return
        assert self._threads is not None
        self._threads.abandon(running)
        if running.interrupt is None:  # its timeout
            assert running.task.timeout is not None
            self._done(running, self._timed_out(running.task, running.task.timeout))
        else:
            self._done(running, self._interrupted(running))

    def _done(self, running: Running, outcome: Outcome | None) -> None:
        """A run ended: free its slot, then write the outcome (None: release it)."""
        assert self._writer is not None and self._idle is not None
        running.done = True
        if running.timer is not None:
            running.timer.cancel()
        elapsed = time.monotonic() - running.started
        self._run_time += (elapsed - self._run_time) * 0.05
        running.outcome = outcome
        if running.observed:
            running.run_time = elapsed
            end_run(running, outcome, elapsed)
        self._executing -= 1
        if not self._executing:
            self._idle.set()
        if running is self._solo:
            self._solo = None
        if outcome is None:
            self._writer.unmark(running)
            self._to_release.append(running.task.lease)
            self._forget(running)
            assert self._stop_requested is not None
            if not self._stop_requested.is_set():  # not a shutdown: hand it back now
                release = asyncio.ensure_future(self._release_pending())
                self._background.add(release)
                release.add_done_callback(self._background.discard)
        else:
            self._writer.submit(running, outcome)
        self._dispatch()

    def _lease_until(self, running: Running) -> float:
        """When (monotonic) the lease on ``running`` ends, as far as this worker knows."""
        return max(running.claimed_at, self._renewed_at) + self.lease_seconds

    def _recorded(self, running: Running, applied: bool | None) -> None:
        """The writer stored (True), lost the lease of (False), or could not write
        (None) one outcome."""
        task = running.task
        if applied is None:
            # The lease will expire and the task runs again: nothing is lost.
            logger.error("worker %s: could not record the outcome of task %s", self.id, task.id)
        elif not applied:
            logger.warning(
                "worker %s: lost the lease of task %s (attempt %d); its outcome was "
                "discarded because another worker took it over",
                self.id,
                task.id,
                task.attempts,
            )
        else:
            self.tasks_done += 1
            outcome = running.outcome
            if outcome is not None:
                self.outcomes[outcome_name(outcome)] += 1
                if outcome.retry_at is not None:
                    self._retries_due = max(self._retries_due, outcome.retry_at)
                if outcome.status != "succeeded":  # the only cost a success pays
                    log_failure(running.task, outcome, self.backend.now())
                if running.observed:
                    self._announce_outcome(running, outcome)
        self._forget(running)

    def _announce_outcome(self, running: Running, outcome: Outcome) -> None:
        """Fire the signal for ``running``'s outcome, now stored."""
        signal = OUTCOME_SIGNALS[outcome_name(outcome)]
        if not signal.has_receivers:
            return
        task = running.task
        value = None
        if outcome.status == "succeeded" and outcome.result is not None:
            try:
                value = bound_loads(self.serializer, outcome.result, self._binding(task, "result"))
            except Exception:
                logger.exception("task %s: could not load its result for task_completed", task.id)
        signal.send_nowait(
            TaskEvent(
                task.id,
                task.func_name,
                task.queue,
                task.attempts,
                self.id,
                value=value,
                error=outcome.error,
                traceback=outcome.traceback,
                retry_at=outcome.retry_at,
                duration=running.run_time,
            )
        )

    def _outcome_from_reply(self, task: ClaimedTask, reply: Reply) -> Outcome:
        kind, text = reply[0], reply[1]
        if kind == "ok":
            return Outcome("succeeded", result=text)
        if kind == "error":
            return self._failure(task, text, reply[2])
        if kind == "load_error":
            where = f"task {task.id} ({task.func_name}) could not be loaded in the worker's child"
            if reply[2] is not None:  # its module's code raised: the reply says what and where
                # Retried if the task has retries, as an import failure is in the thread path.
                return self._failure(task, f"SerializationError: {where}: {text}", reply[2])
            error = (
                f"SerializationError: {where} process ({text}); start the worker with "
                "`--import MODULE` or from the directory holding the module"
            )
        elif kind == "dump_error":
            error = (
                f"SerializationError: the return value of task {task.id} ({task.func_name}), "
                f"a {reply[2]}, could not be serialized ({text})"
            )
        else:  # bad_payload
            error = f"{text} (task {task.id}, {task.func_name})"
        return Outcome("failed", error=error)

    def _timed_out(self, task: ClaimedTask, elapsed: float) -> Outcome:
        error = (
            f"TimeoutError: task exceeded its timeout of {task.timeout:g} s "
            f"(stopped after {elapsed:.2f} s)"
        )
        return self._failure(task, error, None)

    def _failure(self, task: ClaimedTask, error: str, tb: str | None) -> Outcome:
        if task.attempts <= task.max_retries:
            delay = retry_delay(task.retry_backoff, task.attempts)
            return Outcome("queued", error=error, traceback=tb, retry_at=self.backend.now() + delay)
        return Outcome("failed", error=error, traceback=tb)

    @staticmethod
    def _interrupted(running: Running) -> Outcome | None:
        """A stopped run's outcome: cancelled if a user asked, else None (released)."""
        if running.interrupt == "cancel":
            return Outcome("cancelled", error="cancelled while running")
        return None

    def _interrupt(self, running: Running, reason: str) -> None:
        """Stop a task: "cancel" (a user asked) or "shutdown" (release it)."""
        if running.interrupt is not None or running.done:
            return
        running.interrupt = reason
        if reason == "cancel" and running.current is not None:
            running.current.request_cancel()  # current_task().cancel_requested
        if running.runner is not None:
            pool = self._processes
            if reason == "cancel" and pool is not None and pool.running(running.current):
                # A child process cannot be interrupted, only killed: let the task
                # stop on its own first, if it watches cancel_requested. (Not begun
                # yet, it has nothing to stop: the child is killed, or never sent it.)
                loop = asyncio.get_running_loop()
                loop.call_later(PROCESS_CANCEL_GRACE, self._stop_runner, running)
            else:
                running.runner.cancel()
        elif running.in_thread:
            self._abandon_thread_run(running)
        elif reason == "cancel" and running.started_at is None and running in self._ready:
            self._cancel_prefetched(running)
        # Otherwise about to start: _start sees the interrupt.

    @staticmethod
    def _stop_runner(running: Running) -> None:
        """Cancel the run of ``running`` unless it has ended."""
        if not running.done and running.runner is not None:
            running.runner.cancel()

    def _cancel_prefetched(self, running: Running) -> None:
        """End a cancelled task still waiting for a slot: at once, not once a slot
        frees (its caller's get_result would wait that long). What is executing is
        left alone."""
        assert self._writer is not None
        self._ready.remove(running)  # rare (a cancel), so the deque's O(n) is fine
        running.done = True
        running.outcome = outcome = Outcome("cancelled", error="cancelled before it started")
        running.observed = observed()  # as when _start finds the interrupt
        if running.observed:
            end_run(running, outcome, 0.0)
        self._writer.submit(running, outcome)  # started_at None: it never ran
