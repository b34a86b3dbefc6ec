"""The Worker: claim tasks, run them, report their outcomes.

One worker is one asyncio loop with ``concurrency`` slots. It claims only as
many tasks as it has free slots (bounded prefetch), holds each by a lease that a
heartbeat renews, and writes outcomes in small group commits. Whatever happens
to one task (it raises, hangs, returns something unpicklable, kills its child
process) becomes that task's outcome; the worker keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import socket
import time
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import FunctionType
from typing import Any

from sitq import checks, signals, telemetry
from sitq.backends import open_backend
from sitq.backends.base import (
    Backend,
    ClaimedTask,
    Lease,
    Outcome,
    UnreadablePayload,
    WorkerRecord,
)
from sitq.display import redact, terminal_safe
from sitq.errors import (
    ConfigurationError,
    SerializationError,
    SitqError,
    WorkerCrashed,
)
from sitq.headers import unwrap as unwrap_headers
from sitq.queue import TaskQueue
from sitq.registry import UnknownTask, resolve
from sitq.schedules import Schedule, Scheduler
from sitq.schedules import registered as registered_schedules
from sitq.serialization import (
    Binding,
    Serializer,
    binds,
    bound_loads,
    default_serializer,
    dumps_checked,
    loads_checked,
    payload_binding,
    result_binding,
)
from sitq.signals import TaskEvent, WorkerEvent
from sitq.task import retry_delay
from sitq.worker.calls import unpack_call
from sitq.worker.process_pool import ChildDied, ProcessPool
from sitq.worker.thread_slots import ThreadSlots

logger = logging.getLogger("sitq.worker")

POOLS = ("auto", "thread", "process")
#: Adaptive prefetch holds about this many seconds of work per slot...
PREFETCH_HORIZON = 0.05
#: ...and never more than this many tasks beyond the free slots.
MAX_PREFETCH = 128
#: Seconds between refreshes of the sitq.queue.depth gauge (when metrics are on).
DEPTH_INTERVAL = 30.0
#: Seconds an interrupted async task may take to honour its cancellation.
CANCEL_GRACE = 5.0
#: A task still running this many seconds after its start has the start written
#: (it reads as running from then on); a task that ends sooner has its start
#: written with its outcome, so a short task costs no extra write.
START_MARK_DELAY = 0.05
#: The longest pause between tries to write outcomes while the database fails.
RETRY_WRITE_MAX = 1.0
#: The shortest pause between two heartbeats brought forward by cancel requests
#: (a burst of cancels costs each worker a heartbeat per this many seconds).
CANCEL_WAKE_GAP = 0.05


class _TimedOut(Exception):
    """A run exceeded its task's timeout (distinct from a TimeoutError the task raised)."""


class _Raised(Exception):
    """Carries a BaseException a task raised out of the asyncio Task that ran it."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(exc)
        self.exc = exc


async def _contained(awaitable: Any) -> Any:
    """Await ``awaitable``, turning its SystemExit or KeyboardInterrupt into _Raised.

    An asyncio Task re-raises those two out of the event loop itself, which would
    end the worker's loop: a task's exceptions must fail that task only.
    """
    try:
        return await awaitable
    except (SystemExit, KeyboardInterrupt) as exc:
        raise _Raised(exc) from None


async def _with_timeout(awaitable: Any, timeout: float | None) -> Any:
    """Await ``awaitable``; after ``timeout`` seconds cancel it and raise _TimedOut.

    A BaseException the task raises comes back as itself, never through the loop.
    """
    if timeout is None:
        return await awaitable
    future = asyncio.ensure_future(_contained(awaitable))
    try:
        done, _ = await asyncio.wait([future], timeout=timeout)
    except asyncio.CancelledError:
        future.cancel()
        raise
    if done:
        try:
            return future.result()
        except _Raised as raised:
            raise raised.exc from None
    future.cancel()
    await asyncio.wait([future], timeout=1.0)  # let it clean up, briefly
    raise _TimedOut()


@dataclass(eq=False)
class _Running:
    """A task this worker holds, and how it is being run."""

    task: ClaimedTask
    runner: asyncio.Task[None] | None = None  # an async or process-pool run
    in_thread: bool = False  # a sync run on a ThreadSlots thread
    timer: asyncio.TimerHandle | None = None  # a thread run's timeout
    interrupt: str | None = None  # "cancel" or "shutdown" once asked to stop
    done: bool = False  # its outcome is decided (the thread may still run on)
    started: float = 0.0  # time.monotonic() when it began to run
    started_at: float | None = None  # the same on the backend's clock
    span: Any = None  # its CONSUMER span, when tracing is on
    outcome: Outcome | None = None  # as decided, kept for the signals once recorded
    run_time: float = 0.0  # seconds it ran
    observed: bool = False  # someone listens: spans, metrics, signals
    claimed_at: float = 0.0  # time.monotonic() just before the claim that took it
    start_recorded: bool = False  # its start is stored (see Backend.record_start)


class Worker:
    """Runs tasks from one or more queues.

    :param backend: a Backend, or a database URL/path (as for TaskQueue).
    :param serializer: must match the producers' (cloudpickle by default).
    :param concurrency: how many tasks run at once (>= 1).
    :param queues: the queues to serve.
    :param pool: ``"auto"`` runs coroutine functions on the event loop and plain
        functions in threads; ``"thread"`` runs both in threads (a coroutine
        function gets an event loop of its own); ``"process"`` runs both in a
        pool of ``concurrency`` child processes.
    :param max_tasks_per_child: replace a process-pool child after this many tasks.
    :param prefetch: how many tasks to claim beyond the free slots, so a slot
        never waits for the database. ``None`` (the default) adapts it to the
        tasks' run time, holding about ``PREFETCH_HORIZON`` seconds of work
        (at most ``MAX_PREFETCH`` tasks): many short tasks are claimed in large
        batches, while long tasks are not hoarded away from other workers.
        Prefetched tasks hold leases (they read as queued, claimed, until they
        start); a stop releases them at once.
    :param lease_seconds: how long a claim holds without renewal; a task whose
        worker died runs again after at most this long.
    :param grace_period: seconds ``stop()`` waits for running tasks by default.
    :param poll_interval: the longest an idle worker waits between looks at the
        queue when no wake-up arrives (at most 0.05 s).
    :param imports: modules to import in process-pool children.
    :param schedules: the periodic tasks this worker enqueues when due (each run
        once across all workers); None: every schedule registered in this process
        (``@queue.periodic`` in the imported modules) when the worker starts.
    :param burst: run until no task is ready and none runs, then stop (waiting
        for retries this worker scheduled). ``outcomes`` then counts what ran.
    :param max_concurrency: not an option: refused with a pointer to ``concurrency``
        (the name other task queues use).

    A thread task that times out or is cancelled cannot be stopped: its outcome
    is recorded and its slot given to a fresh thread, but the thread runs on to
    its end (task threads are daemons, so they never hold the process open).
    """

    def __init__(
        self,
        backend: Backend | str | os.PathLike[str] | None = None,
        serializer: Serializer | None = None,
        *,
        concurrency: int = 1,
        queues: Sequence[str] = ("default",),
        pool: str = "auto",
        max_tasks_per_child: int | None = None,
        prefetch: int | None = None,
        lease_seconds: float = 30.0,
        grace_period: float = 30.0,
        poll_interval: float = 0.05,
        imports: Sequence[str] = (),
        name: str | None = None,
        schedules: Sequence[Schedule] | None = None,
        burst: bool = False,
        max_concurrency: int | None = None,
    ) -> None:
        if max_concurrency is not None:
            raise ConfigurationError(
                f"Worker has no max_concurrency option (got {max_concurrency!r}): pass "
                "concurrency=N, how many tasks the worker runs at once"
            )
        checks.integer(
            "concurrency", concurrency, minimum=1, hint=": how many tasks the worker runs at once"
        )
        if isinstance(queues, str):
            queues = (queues,)
        if not queues or not all(isinstance(q, str) and q for q in queues):
            raise ConfigurationError(f"queues must be non-empty queue names, got {queues!r}")
        if pool not in POOLS:
            raise ConfigurationError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        if max_tasks_per_child is not None:
            checks.integer("max_tasks_per_child", max_tasks_per_child, minimum=1)
        if prefetch is not None:
            checks.integer("prefetch", prefetch, minimum=0, hint="; None adapts it")
        lease_seconds = checks.seconds("lease_seconds", lease_seconds, positive=True)
        grace_period = checks.seconds("grace_period", grace_period)
        poll_interval = checks.seconds("poll_interval", poll_interval, positive=True)
        self.backend = open_backend(backend)
        self.serializer: Serializer = serializer or default_serializer()
        self._binds = binds(self.serializer)  # signs bound to the row: see _binding()
        self.concurrency = concurrency
        self.queues = tuple(dict.fromkeys(queues))
        self.pool = pool
        self.max_tasks_per_child = max_tasks_per_child
        self.prefetch = prefetch  # None: adaptive, see _prefetch_now()
        self._run_time = PREFETCH_HORIZON  # running mean of task run time, seconds
        self.lease_seconds = float(lease_seconds)
        self.heartbeat_interval = min(self.lease_seconds / 3, 10.0)
        self.grace_period = float(grace_period)
        self.poll_interval = min(float(poll_interval), 0.05)
        self.imports = tuple(imports)
        self.schedules = None if schedules is None else list(schedules)
        self.burst = burst
        #: Recorded outcomes by kind: succeeded, failed, cancelled, retried.
        self.outcomes: dict[str, int] = dict.fromkeys(
            ("succeeded", "failed", "cancelled", "retried"), 0
        )
        self._retries_due = 0.0  # burst: a retry this worker scheduled runs by then
        self._scheduler: asyncio.Task[None] | None = None
        self.id = name or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.tasks_done = 0
        self._running: dict[str, _Running] = {}  # every task held: prefetched, run, writing
        self._ready: deque[_Running] = deque()  # prefetched, waiting for a slot
        self._solo: _Running | None = None  # the suspect running now (see _dispatch)
        self._executing = 0
        self._threads: ThreadSlots | None = None
        self._processes: ProcessPool | None = None
        self._writer: _OutcomeWriter | None = None
        self._main: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._stop_requested: asyncio.Event | None = None
        self._force: asyncio.Event | None = None
        self._room: asyncio.Event | None = None  # set when a held task starts or leaves
        self._idle: asyncio.Event | None = None  # set while no task is executing
        self._to_release: list[Lease] = []
        self._background: set[asyncio.Future[None]] = set()
        self._stopping: asyncio.Task[None] | None = None
        self._stopped: asyncio.Event | None = None
        self._crash: BaseException | None = None  # what ended the claim loop, if not a stop
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it runs on
        self._renewed_at = 0.0  # time.monotonic() just before the last heartbeat that worked

    # -- lifecycle ----------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between ``start()`` and the end of ``stop()``."""
        return self._main is not None and self._stopped is not None and not self._stopped.is_set()

    async def start(self) -> None:
        """Connect, register, and start claiming. Returns once the worker runs.

        Calling it while the worker runs does nothing; after ``stop()`` it starts
        the worker again (waiting for a stop in progress to end first).
        """
        if self._main is not None:
            if self._stopping is not None:
                await asyncio.shield(self._stopping)
            if self._stopped is None or not self._stopped.is_set():
                return  # running
            self._reset()
        self._stop_requested = asyncio.Event()
        self._force = asyncio.Event()
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopped = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        await self.backend.connect()
        try:
            if self.pool == "process":
                self._processes = ProcessPool(
                    self.concurrency,
                    self.serializer,
                    max_tasks_per_child=self.max_tasks_per_child,
                    imports=self.imports,
                )
                await self._processes.start()
            else:
                self._threads = ThreadSlots(
                    self.concurrency,
                    self.serializer,
                    asyncio.get_running_loop(),
                    self._thread_done,
                )
            now = self.backend.now()
            await self.backend.register_worker(
                WorkerRecord(
                    id=self.id,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    queues=self.queues,
                    concurrency=self.concurrency,
                    started_at=now,
                    heartbeat_at=now,
                    stopped_at=None,
                )
            )
        except BaseException:
            if self._processes is not None:
                await self._processes.close()
            await self.backend.close()
            raise
        self._writer = _OutcomeWriter(self.backend, self._recorded, self._lease_until)
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name=f"{self.id}-heartbeat")
        self._main = asyncio.create_task(self._claim_loop(), name=f"{self.id}-claim")
        self._main.add_done_callback(self._claim_loop_ended)
        plan = registered_schedules() if self.schedules is None else self.schedules
        if plan:
            producer = TaskQueue(self.backend, self.serializer)
            await producer.connect()
            self._scheduler = asyncio.create_task(
                self._run_scheduler(producer, plan), name=f"{self.id}-scheduler"
            )
        if signals.worker_started.has_receivers:
            signals.worker_started.send_nowait(self._event())
        logger.info(
            "worker %s started: queues=%s concurrency=%d pool=%s",
            self.id,
            ",".join(self.queues),
            self.concurrency,
            self.pool,
        )

    def _reset(self) -> None:
        """Forget a finished run's state, so ``start()`` can run the worker again."""
        self._main = self._heartbeat = self._scheduler = None
        self._writer = None
        self._threads = None
        self._processes = None
        self._running = {}
        self._ready = deque()
        self._solo = None
        self._executing = 0
        self._to_release = []
        self._background = set()
        self._stopping = None
        self._stopped = None
        self._crash = None

    def _claim_loop_ended(self, main: asyncio.Task[None]) -> None:
        """The claim loop must only end on a stop: if a defect ended it, stop the
        worker (releasing what it holds) rather than heartbeat its tasks forever."""
        if main.cancelled() or main.exception() is None:
            return
        exc = main.exception()
        self._crash = exc
        logger.critical(
            "worker %s: its claim loop died (%s: %s); stopping the worker",
            self.id,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._shutdown(self.grace_period))

    async def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: claim nothing more, let running tasks finish within
        ``timeout`` seconds (default: ``grace_period``), then release the rest back
        to the queue without counting the attempt. Safe to call more than once."""
        if self._main is None or self._stopped is None:
            return
        if self._stopping is None:
            grace = self.grace_period if timeout is None else max(0.0, timeout)
            self._stopping = asyncio.create_task(self._shutdown(grace))
        await asyncio.shield(self._stopping)

    def request_stop(self, timeout: float | None = None) -> None:
        """Ask the worker to stop as ``stop(timeout)`` does, from any thread, without
        waiting: ``run()`` returns (or ``running`` turns False) once it has stopped.
        Does nothing if the worker is not running."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._begin_stop, timeout)

    def _begin_stop(self, timeout: float | None) -> None:
        if self._main is not None and self._stopping is None:
            grace = self.grace_period if timeout is None else max(0.0, timeout)
            self._stopping = asyncio.ensure_future(self._shutdown(grace))

    def stop_now(self) -> None:
        """Ask a stop in progress to stop waiting for running tasks (releasing them)."""
        if self._force is not None:
            self._force.set()
        if self._stopping is None and self._main is not None:
            self._stopping = asyncio.ensure_future(self._shutdown(0.0))

    async def run(self) -> None:
        """Start if needed, and run until stopped or signalled.

        The first SIGTERM or SIGINT stops gracefully; a second one stops at once,
        still releasing what runs back to the queue.
        """
        await self.start()
        assert self._stopped is not None
        loop = asyncio.get_running_loop()
        installed = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, self._on_signal, signum)
                installed.append(signum)
        try:
            await self._stopped.wait()
            if self._stopping is not None:
                await self._stopping
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
        if self._crash is not None:
            raise WorkerCrashed(
                f"worker {self.id} stopped because its claim loop died "
                f"({type(self._crash).__name__}: {self._crash}); the tasks it held were "
                "released or will run again; this is a bug in sitq, please report it "
                "with the worker's log"
            ) from self._crash

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stopping is None:
            logger.info(
                "worker %s: %s received, draining (%d running; again to stop at once)",
                self.id,
                name,
                len(self._running),
            )
            self._stopping = asyncio.ensure_future(self._shutdown(self.grace_period))
        else:
            logger.warning("worker %s: %s received again, stopping at once", self.id, name)
            self.stop_now()

    async def _shutdown(self, grace: float) -> None:
        assert self._stopped is not None
        try:
            await self._drain_and_close(grace)
        finally:
            self._stopped.set()

    async def _drain_and_close(self, grace: float) -> None:
        assert self._stop_requested and self._force and self._main and self._idle
        self._stop_requested.set()
        if self._scheduler is not None:
            with contextlib.suppress(Exception):
                await self._scheduler
        if signals.worker_stopping.has_receivers:
            await signals.worker_stopping.send(self._event())
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self._main  # a defect that ended it is logged by _claim_loop_ended
        # What has not started goes back at once; what runs gets the grace period.
        for running in self._ready:
            self._to_release.append(running.task.lease)
            self._forget(running)
        self._ready.clear()
        await self._release_pending()
        if self._executing and grace > 0 and not self._force.is_set():
            await self._wait_any(self._idle.wait(), grace, also=self._force)
        for running in list(self._running.values()):
            if not running.done:
                self._interrupt(running, "shutdown")
        runners = [r.runner for r in self._running.values() if r.runner and not r.runner.done()]
        if runners:
            # A task that ignores cancellation gets a few seconds, then its lease
            # is released anyway (it may run on, detached, until the process exits).
            limit = 0.5 if self._force.is_set() else CANCEL_GRACE
            _, stubborn = await asyncio.wait(runners, timeout=limit)
            for running in list(self._running.values()):
                if running.runner in stubborn and not running.done:
                    logger.warning(
                        "worker %s: task %s ignores cancellation; releasing it",
                        self.id,
                        running.task.id,
                    )
                    self._done(running, None)
        await self._release_pending()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self._writer is not None:
            await self._writer.close()
        try:
            await self.backend.unregister_worker(self.id)
        except Exception:
            logger.exception("worker %s: could not record its stop", self.id)
        if self._processes is not None:
            await self._processes.close()
        if self._threads is not None:
            self._threads.close()
        await self.backend.close()
        logger.info("worker %s stopped after %d tasks", self.id, self.tasks_done)

    async def _run_scheduler(self, producer: TaskQueue, plan: list[Schedule]) -> None:
        assert self._stop_requested is not None
        try:
            await Scheduler(producer, plan).run(self._stop_requested)
        finally:
            await producer.close()

    def _event(self) -> WorkerEvent:
        return WorkerEvent(self.id, self.queues, self.concurrency)

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

    # -- claiming -----------------------------------------------------------

    async def _claim_loop(self) -> None:
        try:
            await self._claim_until_stopped()
        except asyncio.CancelledError:
            assert self._stop_requested is not None
            if not self._stop_requested.is_set():
                await self._loop_ending()
            raise

    async def _loop_ending(self) -> None:
        """The claim loop was cancelled without a stop: its event loop is ending
        (``asyncio.run(worker.start())`` returned). Hand back what is held and
        unregister, so the worker is not counted alive with nothing running it."""
        assert self._stop_requested is not None and self._stopped is not None
        self._stop_requested.set()
        if self._background:  # releases already under way
            await asyncio.gather(*self._background, return_exceptions=True)
        for running in self._running.values():
            if not running.done:
                running.done = True  # a thread may still finish it: its reply is dropped
                self._to_release.append(running.task.lease)
        self._ready.clear()
        logger.warning(
            "worker %s: its event loop is ending without stop(); releasing %d held tasks "
            "and unregistering (await worker.stop() before the loop ends, or run the "
            "worker with `await worker.run()`)",
            self.id,
            len(self._to_release),
        )
        try:
            await self._release_pending()
            await self.backend.unregister_worker(self.id)
        except Exception:
            logger.exception("worker %s: could not record its stop", self.id)
        finally:
            if self._processes is not None:
                await self._processes.close()
            if self._threads is not None:
                self._threads.close()
            with contextlib.suppress(Exception):
                await self.backend.close()
            self._stopped.set()

    async def _claim_until_stopped(self) -> None:
        assert self._stop_requested and self._room
        failures = 0
        while not self._stop_requested.is_set():
            prefetch = self._prefetch_now()
            room = self.concurrency + prefetch - len(self._running)
            busy = self._executing >= self.concurrency
            if room <= 0 or (busy and len(self._ready) > prefetch // 2):
                # Enough in hand: claim again once a slot frees or the buffer runs low.
                self._room.clear()
                await self._wait_any(self._room.wait(), None)
                continue
            try:
                asked_at = time.monotonic()  # the leases run from no earlier than this
                # Burst mode ends only on a claim that began once every retry was due.
                asked_wall = time.time()
                claimed = await self.backend.claim(self.id, self.queues, room, self.lease_seconds)
                failures = 0
            except Exception:
                failures += 1
                logger.exception("worker %s: claim failed (attempt %d)", self.id, failures)
                await self._wait_any(asyncio.sleep(min(0.05 * 2**failures, 5.0)), None)
                continue
            for task in claimed:
                running = _Running(task, claimed_at=asked_at)
                self._running[task.id] = running
                self._ready.append(running)
            self._dispatch()
            if len(claimed) < room:
                if self.burst and not self._running and asked_wall >= self._retries_due:
                    logger.info("worker %s: nothing left to run (burst mode)", self.id)
                    self._stopping = asyncio.ensure_future(self._shutdown(self.grace_period))
                    return
                # The queue had no more ready work: wait for a wake-up or the poll.
                await self._wait_any(
                    self.backend.wait_for_change("tasks", self.poll_interval), None
                )

    def _prefetch_now(self) -> int:
        if self.prefetch is not None:
            return self.prefetch
        per_slot = PREFETCH_HORIZON / max(self._run_time, 1e-5)
        return max(1, min(MAX_PREFETCH, int(per_slot * self.concurrency)))

    def _dispatch(self) -> None:
        """Start prefetched tasks, in claim order, while slots are free.

        A task once lost with its worker (``recorded_start``, a suspect) has its
        start recorded before it runs, and at most one suspect runs at a time:
        if it is what kills workers, it alone is charged when it does so again
        (the ordinary tasks running beside it go back uncharged). Ordinary tasks
        are started past a suspect that waits for the running one to end, so
        one worker's crash does not serialize everything prefetched after it.
        """
        assert self._stop_requested is not None and self._idle is not None
        assert self._writer is not None
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

    def _next_ready(self) -> _Running | None:
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

    def _begin(self, running: _Running) -> None:
        """``_start``, failing the task if starting it raises."""
        try:
            self._start(running)
        except Exception as exc:
            # A defect in starting this one task must not end the claim loop
            # (which would leave every held task heartbeated forever).
            logger.exception("worker %s: could not start task %s", self.id, running.task.id)
            if not running.done:
                error = f"{type(exc).__name__} while the worker started the task: {exc}"
                self._done(running, self._failure(running.task, error, _format_tb(exc)))

    def _forget(self, running: _Running) -> None:
        # Only this run: a task reclaimed by this same worker (its lease expired
        # while the loop was blocked) may already be held again under a new attempt.
        if self._running.get(running.task.id) is running:
            del self._running[running.task.id]
        assert self._room is not None
        self._room.set()

    async def _wait_any(
        self, awaitable: Any, timeout: float | None, also: asyncio.Event | None = None
    ) -> None:
        """Wait for ``awaitable`` or for the event ``also`` (default: a stop request),
        whichever comes first, for at most ``timeout`` seconds."""
        assert self._stop_requested
        first = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future((also or self._stop_requested).wait())
        try:
            await asyncio.wait([first, stop], timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            for future in (first, stop):
                if not future.done():
                    future.cancel()

    # -- running ------------------------------------------------------------

    def _start(self, running: _Running) -> None:
        """Begin one task: on a thread, on the loop, or in a child process."""
        task = running.task
        running.observed = _observed()
        if running.interrupt == "cancel":
            running.started_at = None  # it never ran
            self._done(running, self._cancelled())
            return
        if type(task.payload) is UnreadablePayload:
            error = f"SerializationError: task {task.id} ({task.func_name}): {task.payload.problem}"
            self._done(running, Outcome("failed", error=error))
            return
        if task.recorded_start and not running.start_recorded:
            # Once lost by a worker before a known start (maybe it kills its
            # worker at once): record the start first, so that a next loss counts.
            step = asyncio.create_task(self._record_start(running), name=task.id)
            running.runner = step
            step.add_done_callback(lambda _: self._record_step_ended(running, step))
            return
        headers, body = unwrap_headers(task.payload)
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
            self._start_runner(running, lambda: pool.run(body, bindings))
            return
        try:
            what = f"task {task.id} ({task.func_name})"
            call = loads_checked(self.serializer, body, what, self._binding(task, "payload"))
            fn, args, kwargs = unpack_call(call, what)
        except SerializationError as exc:
            # Deterministic: running it again would fail the same way.
            self._done(running, Outcome("failed", error=f"{type(exc).__name__}: {exc}"))
            return
        try:
            fn = resolve(fn)
        except UnknownTask as exc:
            # Maybe only this worker lacks the module (a deploy in progress):
            # retries, if the task has any, may reach a worker that has it.
            self._done(running, self._failure(task, f"UnknownTask: {exc}", None))
            return
        if self.pool == "auto" and _is_async(fn):
            self._start_runner(running, lambda: fn(*args, **kwargs))
            return
        assert self._threads is not None
        running.in_thread = True
        self._threads.submit(
            running,
            telemetry.run_in_span(running.span, fn),
            args,
            kwargs,
            self._binding(task, "result"),
        )
        if task.timeout is not None:
            running.timer = asyncio.get_running_loop().call_later(
                task.timeout, self._abandon_thread_run, running, "timeout"
            )

    def _binding(self, task: ClaimedTask, label: str) -> Binding | None:
        """What the task's payload or result is signed for; None when not signing."""
        if not self._binds:
            return None
        if label == "payload":
            return payload_binding(task.id, task.func_name, task.queue)
        return result_binding(task.id, task.func_name)

    async def _record_start(self, running: _Running) -> None:
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

    def _record_step_ended(self, running: _Running, step: asyncio.Task[None]) -> None:
        # Interrupted (a cancel, a stop) before the task itself started.
        if running.runner is step and not running.done:
            self._done(running, None if running.interrupt != "cancel" else self._cancelled())

    def _start_runner(self, running: _Running, make: Any) -> None:
        runner = asyncio.create_task(self._run_awaitable(running, make), name=running.task.id)
        runner.add_done_callback(lambda _: self._runner_ended(running))
        running.runner = runner

    def _runner_ended(self, running: _Running) -> None:
        # A runner cancelled before its first step never runs its body: settle
        # its task here, so a slot is never lost.
        if not running.done:
            self._done(running, None if running.interrupt != "cancel" else self._cancelled())

    async def _run_awaitable(self, running: _Running, make: Any) -> None:
        """Run an async task on the loop, or a payload in a child process."""
        task = running.task
        started = time.monotonic()
        if running.span is not None:  # this runner's own context: spans it opens nest
            telemetry.otel_context.attach(telemetry.trace.set_span_in_context(running.span))
        try:
            value = await _with_timeout(make(), task.timeout)
            if self._processes is not None:
                outcome: Outcome | None = self._outcome_from_reply(task, value)
            else:
                data = dumps_checked(
                    self.serializer,
                    value,
                    f"the return value of task {task.id} ({task.func_name})",
                    self._binding(task, "result"),
                )
                outcome = Outcome("succeeded", result=data)
        except asyncio.CancelledError:
            if running.interrupt is None and _cancelled_from_outside():
                running.interrupt = "shutdown"  # the event loop is ending: hand it back
            if running.interrupt is None:  # the task's own code cancelled something
                outcome = self._failure(task, "CancelledError: the task was cancelled", None)
            else:
                outcome = None if running.interrupt == "shutdown" else self._cancelled()
        except _TimedOut:
            outcome = self._timed_out(task, time.monotonic() - started)
        except SerializationError as exc:
            outcome = Outcome("failed", error=f"SerializationError: {exc}")
        except ChildDied as exc:
            outcome = self._failure(task, f"ChildDied: {exc}", None)
        except BaseException as exc:
            outcome = self._failure(task, f"{type(exc).__name__}: {exc}", _format_tb(exc))
        if not running.done:  # a stop may have given up on it and released it already
            self._done(running, outcome)

    def _thread_done(self, running: _Running, reply: tuple[Any, ...]) -> None:
        """A thread finished a call (on the loop, via ThreadSlots)."""
        if running.done:
            return  # timed out or interrupted earlier: this late reply is dropped
        self._done(running, self._outcome_from_reply(running.task, reply))

    def _abandon_thread_run(self, running: _Running, reason: str) -> None:
        """A thread run can't be stopped: decide its outcome now, and give the pool
        a fresh thread while the stuck one runs on."""
        if running.done:
            return
        assert self._threads is not None
        self._threads.abandon(running)
        task = running.task
        if reason == "timeout":
            assert task.timeout is not None
            self._done(running, self._timed_out(task, task.timeout))
        else:
            self._done(running, None if reason == "shutdown" else self._cancelled())

    def _done(self, running: _Running, outcome: Outcome | None) -> None:
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
            _end_run(running, outcome, elapsed)
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

    def _lease_until(self, running: _Running) -> float:
        """When (time.monotonic()) the lease on ``running`` ends, as far as this
        worker knows: its claim or the last heartbeat that renewed it, plus the
        lease length."""
        return max(running.claimed_at, self._renewed_at) + self.lease_seconds

    def _recorded(self, running: _Running, applied: bool | None) -> None:
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
                self.outcomes[_outcome_name(outcome)] += 1
                if outcome.retry_at is not None:
                    self._retries_due = max(self._retries_due, outcome.retry_at)
                if outcome.status != "succeeded":  # the only cost a success pays
                    _log_failure(running.task, outcome, self.backend.now())
                if running.observed:
                    self._announce_outcome(running)
        self._forget(running)

    def _announce_outcome(self, running: _Running) -> None:
        """Fire the signal for an outcome that is now stored."""
        outcome = running.outcome
        assert outcome is not None
        signal = _SIGNALS[_outcome_name(outcome)]
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

    def _outcome_from_reply(self, task: ClaimedTask, reply: tuple[Any, ...]) -> Outcome:
        kind = reply[0]
        if kind == "ok":
            return Outcome("succeeded", result=reply[1])
        if kind == "load_error" and reply[1].startswith("UnknownTask"):
            return self._failure(task, reply[1], None)
        if kind == "bad_payload" or (
            kind == "load_error" and reply[1].startswith("PayloadRejected")
        ):
            return Outcome("failed", error=f"{reply[1]} (task {task.id}, {task.func_name})")
        if kind == "load_error":
            return Outcome(
                "failed",
                error=f"SerializationError: task {task.id} ({task.func_name}) could not be "
                f"loaded in the worker's child process ({reply[1]}); start the worker with "
                "`--import MODULE` or from the directory holding the module",
            )
        if kind == "dump_error":
            return Outcome(
                "failed",
                error=f"SerializationError: the return value of task {task.id} "
                f"({task.func_name}), a {reply[2]}, could not be serialized ({reply[1]})",
            )
        return self._failure(task, reply[1], reply[2])

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
    def _cancelled() -> Outcome:
        return Outcome("cancelled", error="cancelled while running")

    def _interrupt(self, running: _Running, reason: str) -> None:
        """Stop a task: "cancel" (a user asked) or "shutdown" (release it)."""
        if running.interrupt is not None or running.done:
            return
        running.interrupt = reason
        if running.runner is not None:
            running.runner.cancel()
        elif running.in_thread:
            self._abandon_thread_run(running, reason)
        elif reason == "cancel" and running.started_at is None and running in self._ready:
            self._cancel_prefetched(running)
        # Otherwise about to start: _start sees the interrupt.

    def _cancel_prefetched(self, running: _Running) -> None:
        """End cancelled a task still waiting for a slot: at once, not once a slot
        frees (its caller's get_result would wait that long). What is executing is
        left alone."""
        assert self._writer is not None
        self._ready.remove(running)  # rare (a cancel), so the deque's O(n) is fine
        running.done = True
        running.outcome = outcome = Outcome("cancelled", error="cancelled before it started")
        running.observed = _observed()  # as when _start finds the interrupt
        if running.observed:
            _end_run(running, outcome, 0.0)
        self._writer.submit(running, outcome)  # started_at None: it never ran

    # -- heartbeat ----------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        next_prune = next_depth = 0.0
        while True:
            # Brought forward by a cancel asked of a held task (SQLite wake-up,
            # PostgreSQL NOTIFY), so a prefetched one ends cancelled before it
            # could start; otherwise every heartbeat_interval.
            beat = time.monotonic()
            try:
                await self.backend.wait_for_change("cancels", self.heartbeat_interval)
                gap = min(CANCEL_WAKE_GAP, self.heartbeat_interval)
            except Exception:  # cannot wait for wake-ups: the whole interval passes
                gap = self.heartbeat_interval
            rest = gap - (time.monotonic() - beat)
            if rest > 0:
                await asyncio.sleep(rest)
            try:
                leases = [r.task.lease for r in self._running.values()]
                asked_at = time.monotonic()
                cancel_ids = await self.backend.heartbeat(self.id, leases, self.lease_seconds)
                self._renewed_at = asked_at
                for task_id in cancel_ids:
                    running = self._running.get(task_id)
                    if running is not None:
                        logger.info("worker %s: cancelling task %s", self.id, task_id)
                        self._interrupt(running, "cancel")
                if telemetry.metrics_on() and time.monotonic() >= next_depth:
                    # Counting reads every row: at most twice a minute per worker.
                    next_depth = time.monotonic() + DEPTH_INTERVAL
                    telemetry.set_queue_depth(await self.backend.counts())
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + 60.0
                    pruned = await self.backend.prune()
                    if pruned:
                        logger.info("worker %s: pruned %d expired results", self.id, pruned)
            except Exception:
                logger.exception("worker %s: heartbeat failed; will try again", self.id)


class _OutcomeWriter:
    """Writes outcomes in group commits: all that arrive while one write is in
    flight go together in the next, so many finishing tasks cost one transaction.
    ``recorded(running, applied)`` is called for each once it is settled.

    A write that fails because the database is unavailable (unreachable, or
    locked past the backend's patience) is tried again for as long as the
    task's lease holds (``lease_until(running)``, monotonic): giving up earlier
    would run a finished task again. Once the lease has run out another worker
    may run it, and the outcome is given up. Any other failure (the database
    refuses a value) would fail forever, holding every later outcome behind it:
    each outcome of that batch is then written on its own, and one still
    refused is stored as a plain failure instead (see ``_write_each``).

    It also reports starts: an outcome carries its task's start time, and a task
    still running ``START_MARK_DELAY`` after its start has the start written with
    the next write (one is made for it if none is due), so a task reads as running
    once it has run that long, at no cost to short tasks."""

    def __init__(self, backend: Backend, recorded: Any, lease_until: Any) -> None:
        self._backend = backend
        self._recorded = recorded
        self._lease_until = lease_until
        self._pending: list[tuple[_Running, Outcome]] = []
        self._unmarked: dict[_Running, None] = {}  # started, start not written; in start order
        self._mark_timer: asyncio.TimerHandle | None = None
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = asyncio.create_task(self._loop())

    def started(self, running: _Running) -> None:
        """``running`` began to run: write its start if it runs long enough."""
        self._unmarked[running] = None
        if self._mark_timer is None:
            self._arm_marks()

    def unmark(self, running: _Running) -> None:
        """``running`` ends without an outcome (released): no start to write."""
        self._unmarked.pop(running, None)

    def submit(self, running: _Running, outcome: Outcome) -> None:
        """Queue ``outcome`` for the next write (with the task's start)."""
        self._unmarked.pop(running, None)
        if outcome.error is not None:  # failures only: no cost to a success
            outcome = _storable(outcome)
        self._pending.append((running, outcome))
        self._idle.clear()
        self._ready.set()

    def _arm_marks(self) -> None:
        """Wake the writer when the oldest unwritten start is due."""
        if not self._unmarked:
            return
        oldest = next(iter(self._unmarked))
        delay = max(0.0, oldest.started + START_MARK_DELAY - time.monotonic())
        self._mark_timer = asyncio.get_running_loop().call_later(delay, self._marks_due)

    def _marks_due(self) -> None:
        self._mark_timer = None
        if self._unmarked:
            self._ready.set()

    def _take_due_marks(self) -> list[_Running]:
        """The tasks that have run for START_MARK_DELAY with their start unwritten."""
        if not self._unmarked:
            return []
        due_before = time.monotonic() - START_MARK_DELAY
        due = []
        for running in self._unmarked:
            if running.started > due_before:
                break  # in start order: the rest are younger
            due.append(running)
        for running in due:
            del self._unmarked[running]
        if self._mark_timer is None:
            self._arm_marks()
        return due

    async def _loop(self) -> None:
        failures = 0
        while True:
            if not self._pending:
                self._idle.set()
            await self._ready.wait()
            self._ready.clear()
            batch, self._pending = self._pending, []
            marks = self._take_due_marks()
            if not batch and not marks:
                continue
            started = [
                (r.task.lease, r.started_at) for r, _ in batch if r.started_at is not None
            ] + [(r.task.lease, r.started_at) for r in marks if r.started_at is not None]
            try:
                applied = await self._backend.finish([(r.task.lease, o) for r, o in batch], started)
            except Exception as exc:
                failures += 1
                if failures == 1:
                    logger.exception(
                        "could not write %d outcomes, %d starts (try 1)", len(batch), len(marks)
                    )
                else:
                    logger.warning(
                        "could not write %d outcomes, %d starts (try %d): %s: %s",
                        len(batch),
                        len(marks),
                        failures,
                        type(exc).__name__,
                        exc,
                    )
                for running in marks:  # written with a later write
                    if not running.done:
                        self._unmarked[running] = None
                if self._mark_timer is None:
                    self._arm_marks()
                if not self._unavailable(exc):
                    # Refused, not unreachable: the same batch would fail forever.
                    batch = await self._write_each(batch)
                    if not batch:
                        failures = 0
                        continue
                now = time.monotonic()
                for running, _ in batch:
                    if self._lease_until(running) <= now:
                        self._recorded(running, None)  # another worker may run it now
                batch = [(r, o) for r, o in batch if self._lease_until(r) > now]
                if batch:
                    self._pending[:0] = batch  # keep order; try again shortly
                    self._ready.set()
                await asyncio.sleep(min(0.05 * 2**failures, RETRY_WRITE_MAX))
                continue
            failures = 0
            for (running, _), ok in zip(batch, applied, strict=True):
                self._recorded(running, ok)

    def _unavailable(self, exc: BaseException) -> bool:
        """True unless ``exc`` is known to recur for the outcome written (the
        database refused the value itself): a lost connection, a lock, a deadlock,
        a failover, a full disk... may all pass, so the write is retried while the
        task's lease holds."""
        return not _recurs(exc)

    async def _write_each(
        self, batch: list[tuple[_Running, Outcome]]
    ) -> list[tuple[_Running, Outcome]]:
        """Write each outcome of a refused batch on its own; one still refused is
        replaced by a plain failure, and given up (its task runs again after its
        lease) if even that is refused. Returns those that met an outage instead."""
        left = []
        for running, outcome in batch:
            lease = running.task.lease
            start = [] if running.started_at is None else [(lease, running.started_at)]
            try:
                [applied] = await self._backend.finish([(lease, outcome)], start)
            except Exception as exc:
                if self._unavailable(exc):
                    left.append((running, outcome))
                    continue
                logger.warning(
                    "the outcome of task %s was refused (%s: %s); storing it as failed",
                    running.task.id,
                    type(exc).__name__,
                    exc,
                )
                error = _clean(f"the outcome could not be stored: {type(exc).__name__}: {exc}")
                if outcome.status == "queued":  # a retry stays a retry, at its time
                    plain = replace(outcome, result=None, error=error, traceback=None)
                else:
                    plain = Outcome("failed", error=error)
                running.outcome = plain
                try:
                    [applied] = await self._backend.finish([(lease, plain)], start)
                except Exception as again:
                    if self._unavailable(again):
                        left.append((running, plain))
                        continue
                    logger.exception(
                        "task %s: not even a failure could be stored; it runs again "
                        "once its lease expires",
                        running.task.id,
                    )
                    applied = None
            self._recorded(running, applied)
        return left

    async def close(self) -> None:
        """Stop once every pending outcome is written (or given up on)."""
        await self._idle.wait()
        if self._mark_timer is not None:
            self._mark_timer.cancel()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _clean(text: str) -> str:
    """``text`` as any database stores it: PostgreSQL text refuses NUL, and no
    driver encodes a lone surrogate."""
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _storable(outcome: Outcome) -> Outcome:
    """``outcome`` with its error and traceback as any database stores them
    (NUL and lone surrogates escaped)."""
    error = _clean(outcome.error or "")
    tb = None if outcome.traceback is None else _clean(outcome.traceback)
    if error == outcome.error and tb == outcome.traceback:
        return outcome
    return replace(outcome, error=error, traceback=tb)


# SQLSTATEs that say the value written is at fault, so writing it again fails
# again: 22 data exception (e.g. NUL in text), 23 integrity constraint
# violation, 54000 program limit exceeded (e.g. a value too long).
_RECURRING_SQLSTATES = ("22", "23", "54000")


def _recurs(exc: BaseException) -> bool:
    """True when the error of a write is known to recur for what was written
    (refused data); False for everything else, which may pass (outages, locks,
    deadlocks, serialization failures, timeouts, a failover, a full disk...).
    Follows the causes of a wrapped error."""
    import sqlite3  # the stdlib module; cheap once imported

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_RECURRING_SQLSTATES):
            return True
        if isinstance(current, (sqlite3.DataError, sqlite3.IntegrityError)):
            return True  # a constraint or trigger's RAISE(ABORT), a value too big
        if getattr(current, "sqlite_errorname", None) == "SQLITE_TOOBIG" or (
            isinstance(current, sqlite3.Error) and "string or blob too big" in str(current)
        ):
            return True
        if isinstance(current, (ValueError, OverflowError)) and not isinstance(current, SitqError):
            return True  # the driver cannot encode the value (UnicodeEncodeError...)
        current = current.__cause__
    return False


def _cancelled_from_outside() -> bool:
    """True when the current task was cancelled by someone's ``cancel()`` (on
    Python 3.11+; 3.10 cannot tell, and says False)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling and cancelling())


def _observed() -> bool:
    """True when anyone listens to runs: tracing, metrics or a signal receiver."""
    return signals.any_connected() or telemetry.tracing_on() or telemetry.metrics_on()


_OUTCOME_NAMES = {"succeeded": "succeeded", "failed": "failed", "cancelled": "cancelled"}


def _outcome_name(outcome: Outcome | None) -> str:
    if outcome is None:
        return "released"
    return _OUTCOME_NAMES.get(outcome.status, "retried")


#: The most characters of a task's error a failure log line shows.
_LOGGED_ERROR_LIMIT = 300


def _log_failure(task: ClaimedTask, outcome: Outcome, now: float) -> None:
    """One line per stored failure: WARNING when the task failed for good, INFO
    when a retry is scheduled; a cancellation is not a failure and is not logged.
    The error is stored text: its first line, bounded, without control characters
    or database passwords (a worker embedded in an app may log to a terminal)."""
    if outcome.status == "cancelled":
        return
    error = (outcome.error or "unknown error").strip().split("\n", 1)[0]
    if len(error) > _LOGGED_ERROR_LIMIT:
        error = error[:_LOGGED_ERROR_LIMIT] + "..."
    line = (
        f"task {task.id} ({terminal_safe(task.func_name)}) failed on attempt "
        f"{task.attempts}/{task.max_retries + 1}: {terminal_safe(redact(error))}"
    )
    if outcome.retry_at is None:
        logger.warning("%s", line)
    else:
        logger.info("%s; retry in %.1f s", line, max(outcome.retry_at - now, 0.0))


def _end_run(running: _Running, outcome: Outcome | None, elapsed: float) -> None:
    task = running.task
    telemetry.end_run(
        running.span,
        task.queue,
        task.func_name,
        _outcome_name(outcome),
        elapsed,
        None if outcome is None else outcome.error,
        None if outcome is None else outcome.traceback,
    )
    running.span = None


_SIGNALS = {
    "succeeded": signals.task_completed,
    "failed": signals.task_failed,
    "retried": signals.task_retrying,
    "cancelled": signals.task_cancelled,
}


def _is_async(fn: Any) -> bool:
    """True for coroutine functions and objects with an async ``__call__``."""
    code = getattr(fn, "__code__", None)
    if code is not None and code.co_flags & inspect.CO_COROUTINE:
        return True  # the common case, without inspect's unwrapping
    if type(fn) is FunctionType:
        # A plain function: async only if marked so (inspect.markcoroutinefunction).
        return getattr(fn, "_is_coroutine_marker", None) is not None
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return inspect.iscoroutinefunction(call)


def _format_tb(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
