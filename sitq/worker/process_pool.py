"""A small pool of child processes that run one task at a time each.

Unlike ``concurrent.futures.ProcessPoolExecutor`` it can kill and replace a
single child (on a task timeout or cancel) without disturbing the others,
replaces a child after ``max_tasks_per_child`` tasks, and reports a child that
died (a segfault, ``os._exit``) as that task's failure only.

``sitq.current_task()`` works in a child: its progress reports travel back on
the child's pipe, interleaved before the reply (a thread in the child sends the
latest one at most every ``PROGRESS_SEND_INTERVAL`` seconds, and the last one
goes just before the reply), and ``cancel_requested`` reads a byte of shared
memory the worker sets (a cooperative loop may read it on every item: no
system call, and the child's main thread is busy running the task, so it could
not read a message). A second byte is the child's: it sets it when it begins
the task it was sent (``ProcessPool.running``), so the worker knows whether a
cancel has a run to let stop cooperatively, or only a child still starting up
(importing modules) that may be killed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sitq.current import CancelFlag, CurrentTask, reset_current, set_current
from sitq.serialization import Serializer
from sitq.worker.calls import Bindings, Reply, call_payload

#: The longest a child keeps a new progress report before sending it to its worker.
PROGRESS_SEND_INTERVAL = 0.2
#: The tag of a progress message from a child (a reply's tag is never this).
_PROGRESS = "progress"

#: prctl(2) option: the signal this process gets when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1


class ChildDied(Exception):
    """The child process running a task exited before answering."""


@dataclass(eq=False)
class _Child:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    flag: CancelFlag  # shared with the child: its task's cancel_requested
    begun: CancelFlag  # set by the child when it begins the task it was sent
    tasks_run: int = 0


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "the process running the task died"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the process running the task was killed by {name}"
    return f"the process running the task exited with status {code}"


def _die_with_parent() -> None:
    """End this child when the worker that started it dies (a SIGKILL, an OOM
    kill), so a task never runs on, unaccounted for, while its lease expires and
    another worker runs it again.

    On Linux the kernel sends SIGKILL at once (PR_SET_PDEATHSIG), even while the
    task holds the GIL. Everywhere, a thread also waits on the pipe the parent
    holds open for the child's lifetime: it reads EOF when the parent is gone.
    """
    parent = multiprocessing.parent_process()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is None:
        return
    if parent.pid is not None and os.getppid() != parent.pid:
        os._exit(1)  # the parent died before the death signal was armed
    threading.Thread(
        target=_exit_when_ready, args=(parent.sentinel,), name="sitq-parent-watch", daemon=True
    ).start()


def _exit_when_ready(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


class _ProgressSender:
    """In a child: sends the running task's latest progress report to the worker,
    at most every PROGRESS_SEND_INTERVAL seconds, from a thread of its own."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()  # one sender on the pipe at a time
        self.current: CurrentTask | None = None
        self.sent: Any = None
        self._busy = threading.Event()
        threading.Thread(target=self._loop, name="sitq-progress", daemon=True).start()

    def begin(self, current: CurrentTask) -> None:
        """``current`` starts running."""
        self.current = current
        self._busy.set()

    def send_reply(self, reply: Reply) -> None:
        """Send the last unsent report, then the reply: none follows it."""
        with self.lock:
            current, self.current = self.current, None
            self._busy.clear()
            latest = None if current is None else current.latest
            if latest is not None and latest is not self.sent:
                self.conn.send((_PROGRESS, latest))
            self.conn.send(reply)

    def _loop(self) -> None:
        while True:
            self._busy.wait()
            time.sleep(PROGRESS_SEND_INTERVAL)
            with self.lock:
                current = self.current
                if current is None or current.latest is None or current.latest is self.sent:
                    continue
                self.sent = current.latest
                try:
                    self.conn.send((_PROGRESS, current.latest))
                except OSError:
                    return  # the worker is gone


def _receive(conn: multiprocessing.connection.Connection, current: CurrentTask | None) -> Reply:
    """The child's reply to the task it runs; its progress reports meanwhile go
    to ``current`` (the worker's side of the run)."""
    while True:
        message = conn.recv()
        if message[0] == _PROGRESS:
            if current is not None:
                current.latest = message[1]
            continue
        reply: Reply = message
        return reply


def _child_main(
    conn: multiprocessing.connection.Connection,
    serializer_bytes: bytes,
    sys_path: list[str],
    imports: list[str],
    flag: CancelFlag,
    begun: CancelFlag,
) -> None:
    """Loop in the child: receive a payload (and its signature bindings, and who
    runs as ``current_task()``), mark it begun, run it, send back a tagged reply.
    A task cancelled before the child began it is not run at all."""
    # The parent worker decides on shutdown (drain, then release or kill): a
    # SIGINT or SIGTERM sent to the whole process group must not kill a task.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    sys.path[:] = sys_path
    for module in imports:
        importlib.import_module(module)
    serializer: Serializer = pickle.loads(serializer_bytes)
    sender = _ProgressSender(conn)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        payload, bindings, meta = message
        current = None
        if meta is not None:
            current = CurrentTask(*meta)
            current.share_cancel(flag)
            sender.begin(current)
        # Begun, then the cancel flag read: a worker that saw "not begun" (and
        # kills this child at once) had set the flag already, so the call is skipped.
        begun.value = 1
        if flag.value:
            reply: Reply = ("error", "CancelledError: cancelled before it began", None)
        else:
            mark = set_current(current)
            try:
                reply = call_payload(serializer, payload, bindings)
            finally:
                reset_current(mark)
        sender.send_reply(reply)


class ProcessPool:
    """``size`` child processes (spawned, so the worker's threads are not forked)."""

    def __init__(
        self,
        size: int,
        serializer: Serializer,
        *,
        max_tasks_per_child: int | None = None,
        imports: tuple[str, ...] = (),
    ) -> None:
        self.size = size
        self.max_tasks_per_child = max_tasks_per_child
        self._serializer_bytes = pickle.dumps(serializer)
        self._imports = list(imports)
        self._context = multiprocessing.get_context("spawn")
        self._idle: asyncio.Queue[_Child] = asyncio.Queue()
        self._children: set[_Child] = set()
        self._serving: dict[CurrentTask, _Child] = {}  # the child each run was sent to
        self._io = ThreadPoolExecutor(max_workers=size + 1, thread_name_prefix="sitq-pool-io")
        self._closed = False

    async def start(self) -> None:
        """Start every child (in parallel, off the event loop)."""
        for child in await asyncio.gather(*(self._spawn() for _ in range(self.size))):
            self._idle.put_nowait(child)

    async def _spawn(self) -> _Child:
        loop = asyncio.get_running_loop()
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        flag: CancelFlag = self._context.RawValue("b", 0)
        begun: CancelFlag = self._context.RawValue("b", 0)
        process = self._context.Process(
            target=_child_main,
            args=(child_conn, self._serializer_bytes, list(sys.path), self._imports, flag, begun),
            name="sitq-pool-child",
            daemon=True,
        )
        await loop.run_in_executor(self._io, process.start)
        child_conn.close()
        child = _Child(process, parent_conn, flag, begun)
        self._children.add(child)
        return child

    async def run(
        self, payload: bytes, bindings: Bindings, current: CurrentTask | None = None
    ) -> Reply:
        """Run one payload in a child. Returns the child's tagged reply.

        ``current``: the run as ``sitq.current_task()`` shows it in the child; its
        progress reports land in ``current.latest``, and its ``request_cancel()``
        reaches the child's ``cancel_requested``.

        Cancelling the call kills the child (and starts a replacement); a child
        that dies while running it raises ``ChildDied``.
        """
        loop = asyncio.get_running_loop()
        child = await self._idle.get()
        # "kill" unless the child answered: it may still be running the task.
        disposal = "kill"
        child.flag.value = 0
        child.begun.value = 0
        meta = None
        if current is not None:
            meta = (current.task_id, current.attempt, current.queue)
            self._serving[current] = child
            current.share_cancel(child.flag)
        try:
            child.conn.send((payload, bindings, meta))
            reply = await loop.run_in_executor(self._io, _receive, child.conn, current)
            child.tasks_run += 1
            limit = self.max_tasks_per_child
            disposal = "retire" if limit and child.tasks_run >= limit else "keep"
            return reply
        except (EOFError, OSError) as exc:
            await loop.run_in_executor(self._io, child.process.join, 5)
            raise ChildDied(_describe_exit(child.process.exitcode)) from exc
        finally:
            if current is not None:
                self._serving.pop(current, None)
                current.share_cancel(None)
            if disposal == "keep":
                self._idle.put_nowait(child)
            else:
                await self._retire(child, kill=disposal == "kill")
                if not self._closed:
                    self._idle.put_nowait(await self._spawn())

    def running(self, current: CurrentTask | None) -> bool:
        """True once a child has begun the run of ``current`` (passed to ``run``);
        False while it waits for an idle child, or was sent to one that has not
        begun it yet (still starting up, importing modules)."""
        child = None if current is None else self._serving.get(current)
        return child is not None and bool(child.begun.value)

    async def _retire(self, child: _Child, *, kill: bool) -> None:
        self._children.discard(child)
        loop = asyncio.get_running_loop()
        if not kill and child.process.is_alive():
            with contextlib.suppress(OSError):
                child.conn.send(None)  # a clean exit: it is idle
            await loop.run_in_executor(self._io, child.process.join, 2)
        if child.process.is_alive():
            child.process.kill()
            await loop.run_in_executor(self._io, child.process.join)
        child.conn.close()

    async def close(self) -> None:
        """Stop every child (killing any still running a task)."""
        self._closed = True
        await asyncio.gather(*(self._retire(child, kill=True) for child in list(self._children)))
        self._io.shutdown(wait=False)
