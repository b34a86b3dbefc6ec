"""The Worker's lifecycle: configure, start, run until signalled, stop (drain,
release, unregister), start again. The rest it inherits: ``Claiming`` (the claim
loop and the heartbeat) on ``Execution`` (running what is claimed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Sequence

from sitq import checks, signals
from sitq.backends import open_backend
from sitq.backends.base import Backend, WorkerRecord
from sitq.errors import ConfigurationError, WorkerCrashed
from sitq.queue import TaskQueue
from sitq.schedules import Schedule, Scheduler
from sitq.schedules import registered as registered_schedules
from sitq.serialization import Serializer, binds, default_serializer
from sitq.signals import WorkerEvent
from sitq.worker.claiming import PREFETCH_HORIZON, Claiming
from sitq.worker.outcomes import OutcomeWriter
from sitq.worker.process_pool import ProcessPool
from sitq.worker.runs import logger
from sitq.worker.thread_slots import ThreadSlots

POOLS = ("auto", "thread", "process")
#: Seconds an interrupted async task may take to honour its cancellation.
CANCEL_GRACE = 5.0


class Worker(Claiming):
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
        (at most ``MAX_PREFETCH`` tasks waiting for a slot, holding about
        ``PREFETCH_BYTES`` of payloads at most): many short tasks are claimed in large
        batches, while long tasks are not hoarded away from other workers.
        Prefetched tasks hold leases (they read as queued, claimed, until they
        start); a stop releases them at once.
    :param lease_seconds: how long a claim holds without renewal; a task whose
        worker died runs again after at most this long.
    :param grace_period: seconds ``stop()`` waits for running tasks by default.
    :param poll_interval: the longest an idle worker waits for a wake-up before
        looking at the queue again (0.2 s). A new task wakes it at once, and it
        looks again on its own when the next delayed task, retry or expiring
        lease falls due; only a task written with no wake-up at all (a borrowed
        connection's enqueue without ``wake_workers()``, another tool) waits
        up to this long. While wake-ups cannot be heard it polls every 50 ms.
    :param imports: modules to import in process-pool children.
    :param schedules: the periodic tasks this worker enqueues when due (each run
        once across all workers); None: every schedule registered in this process
        (``@queue.periodic`` in the imported modules) when the worker starts.
    :param burst: run until no task is ready and none runs, then stop (waiting
        for retries this worker scheduled). ``outcomes`` then counts what ran.
    :param create: False to serve only an existing database (what ``sitq worker``
        does): a missing file is an error, not a new empty database.
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
        poll_interval: float = 0.2,
        imports: Sequence[str] = (),
        name: str | None = None,
        schedules: Sequence[Schedule] | None = None,
        burst: bool = False,
        create: bool = True,
        max_concurrency: int | None = None,
    ) -> None:
        if max_concurrency is not None:
            raise ConfigurationError(
                f"Worker has no max_concurrency option (got {max_concurrency!r}): pass "
                "concurrency=N, how many tasks the worker runs at once"
            )
        self.concurrency = checks.integer(
            "concurrency", concurrency, minimum=1, hint=": how many tasks the worker runs at once"
        )
        if isinstance(queues, str):
            queues = (queues,)
        if not queues or not all(isinstance(q, str) and q for q in queues):
            raise ConfigurationError(f"queues must be non-empty queue names, got {queues!r}")
        for queue in queues:
            checks.name("queue", queue)
        if pool not in POOLS:
            raise ConfigurationError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        if max_tasks_per_child is not None:
            checks.integer("max_tasks_per_child", max_tasks_per_child, minimum=1)
        if prefetch is not None:
            checks.integer("prefetch", prefetch, minimum=0, hint="; None adapts it")
        self.lease_seconds = checks.seconds("lease_seconds", lease_seconds, positive=True)
        self.heartbeat_interval = min(self.lease_seconds / 3, 10.0)
        self.grace_period = checks.seconds("grace_period", grace_period)
        self.poll_interval = checks.seconds("poll_interval", poll_interval, positive=True)
        # Each backend has its own default for create: pass it only when refused.
        self.backend = open_backend(backend) if create else open_backend(backend, create=False)
        self.serializer = serializer or default_serializer()
        self._binds = binds(self.serializer)
        self.queues = tuple(dict.fromkeys(queues))
        self.pool = pool
        self.max_tasks_per_child = max_tasks_per_child
        self.prefetch = prefetch
        self._run_time = PREFETCH_HORIZON
        self._payload_size = 0.0
        self.imports = tuple(imports)
        self.schedules = None if schedules is None else list(schedules)
        self.burst = burst
        self.outcomes = dict.fromkeys(("succeeded", "failed", "cancelled", "retried"), 0)
        self._retries_due = 0.0
        self.id = name or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.tasks_done = 0
        self._stop_requested = self._room = self._idle = None
        self._force: asyncio.Event | None = None  # set: stop waiting for running tasks
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it runs on
        self._renewed_at = 0.0
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self._main: asyncio.Task[None] | None = None  # the claim loop
        self._heartbeat: asyncio.Task[None] | None = None
        self._progress: asyncio.Task[None] | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._stopped: asyncio.Event | None = None
        self._crash: BaseException | None = None  # what ended the claim loop, if not a stop

    # -- lifecycle ----------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between ``start()`` and the end of ``stop()``."""
        return self._main is not None and self._stopped is not None and not self._stopped.is_set()

    async def start(self) -> None:
        """Connect, register, and start claiming. Returns once the worker runs. Does
        nothing while it runs; after ``stop()`` (once it ends) it starts it again."""
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
                    self.concurrency, self.serializer, self._loop, self._thread_done
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
        self._writer = OutcomeWriter(self.backend, self._recorded, self._lease_until)
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name=f"{self.id}-heartbeat")
        self._progress = asyncio.create_task(self._progress_loop(), name=f"{self.id}-progress")
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

    def _claim_loop_ended(self, main: asyncio.Task[None]) -> None:
        """The claim loop must only end on a stop: if a defect ended it, stop the
        worker (releasing what it holds) rather than heartbeat its tasks forever."""
        if main.cancelled() or (exc := main.exception()) is None:
            return
        self._crash = exc
        logger.critical(
            "worker %s: its claim loop died (%s: %s); stopping the worker",
            self.id,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        self._begin_stop(None)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: claim nothing more, let running tasks finish within
        ``timeout`` seconds (default: ``grace_period``), then release the rest back
        to the queue without counting the attempt. Safe to call more than once."""
        if self._main is None or self._stopped is None:
            return
        self._begin_stop(timeout)
        assert self._stopping is not None
        await asyncio.shield(self._stopping)

    def request_stop(self, timeout: float | None = None) -> None:
        """Ask the worker to stop as ``stop(timeout)`` does, from any thread, without
        waiting: ``run()`` returns (or ``running`` turns False) once it has stopped.
        Does nothing if the worker is not running."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(self._begin_stop, timeout)

    def _begin_stop(self, timeout: float | None) -> None:
        """Start the stop ``stop(timeout)`` waits for, unless one is under way."""
        if self._main is not None and self._stopping is None:
            grace = self.grace_period if timeout is None else max(0.0, timeout)
            self._stopping = asyncio.ensure_future(self._shutdown(grace))

    def stop_now(self) -> None:
        """Ask a stop in progress to stop waiting for running tasks (releasing them)."""
        if self._force is not None:
            self._force.set()
        self._begin_stop(0.0)

    async def run(self) -> None:
        """Start if needed, and run until stopped or signalled: the first SIGTERM or
        SIGINT stops gracefully, a second at once (still releasing what runs)."""
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
            self._begin_stop(None)
        else:
            logger.warning("worker %s: %s received again, stopping at once", self.id, name)
            self.stop_now()

    async def _shutdown(self, grace: float) -> None:
        assert self._stop_requested and self._force and self._main and self._idle and self._stopped
        try:
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
                self._interrupt(running, "shutdown")  # what has not ended
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
            for loop_task in (self._heartbeat, self._progress):
                if loop_task is not None:
                    loop_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await loop_task
            if self._writer is not None:
                await self._writer.close()
            await self._unregister_and_close()
            # Runs, not tasks: a task retried twice ran three times.
            runs = self.tasks_done
            logger.info(
                "worker %s stopped after %d run%s (%s)",
                self.id,
                runs,
                "" if runs == 1 else "s",
                ", ".join(f"{n} {kind}" for kind, n in self.outcomes.items()),
            )
        finally:
            self._stopped.set()

    async def _unregister_and_close(self) -> None:
        try:
            await self.backend.unregister_worker(self.id)
        except Exception:
            logger.exception("worker %s: could not record its stop", self.id)
        if self._processes is not None:
            await self._processes.close()
        if self._threads is not None:
            self._threads.close()
        await self.backend.close()

    async def _run_scheduler(self, producer: TaskQueue, plan: list[Schedule]) -> None:
        assert self._stop_requested is not None
        try:
            await Scheduler(producer, plan).run(self._stop_requested)
        finally:
            await producer.close()

    def _event(self) -> WorkerEvent:
        return WorkerEvent(self.id, self.queues, self.concurrency)

    # -- the claim loop's end -----------------------------------------------

    async def _claim_loop(self) -> None:
        try:
            if await self._claim_until_stopped():  # burst mode: nothing left to run
                self._begin_stop(None)
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
            with contextlib.suppress(Exception):  # the loop is ending: nothing to raise to
                await self._unregister_and_close()
        finally:
            self._stopped.set()
