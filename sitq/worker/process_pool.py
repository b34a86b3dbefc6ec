"""A small pool of child processes that run one task at a time each.

Unlike ``concurrent.futures.ProcessPoolExecutor`` it can kill and replace a
single child (on a task timeout or cancel) without disturbing the others,
replaces a child after ``max_tasks_per_child`` tasks, and reports a child that
died (a segfault, ``os._exit``) as that task's failure only.
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sitq.serialization import Serializer
from sitq.worker.calls import Bindings, Reply, call_payload

#: prctl(2) option: the signal this process gets when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1


class ChildDied(Exception):
    """The child process running a task exited before answering."""


@dataclass(eq=False)
class _Child:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
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


def _child_main(
    conn: multiprocessing.connection.Connection,
    serializer_bytes: bytes,
    sys_path: list[str],
    imports: list[str],
) -> None:
    """Loop in the child: receive a payload (and its signature bindings), run it,
    send back a tagged reply."""
    # The parent worker decides on shutdown (drain, then release or kill): a
    # SIGINT or SIGTERM sent to the whole process group must not kill a task.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    sys.path[:] = sys_path
    for module in imports:
        importlib.import_module(module)
    serializer: Serializer = pickle.loads(serializer_bytes)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        conn.send(call_payload(serializer, *message))  # (payload, bindings)


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
        self._io = ThreadPoolExecutor(max_workers=size + 1, thread_name_prefix="sitq-pool-io")
        self._closed = False

    async def start(self) -> None:
        """Start every child (in parallel, off the event loop)."""
        for child in await asyncio.gather(*(self._spawn() for _ in range(self.size))):
            self._idle.put_nowait(child)

    async def _spawn(self) -> _Child:
        loop = asyncio.get_running_loop()
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_child_main,
            args=(child_conn, self._serializer_bytes, list(sys.path), self._imports),
            name="sitq-pool-child",
            daemon=True,
        )
        await loop.run_in_executor(self._io, process.start)
        child_conn.close()
        child = _Child(process, parent_conn)
        self._children.add(child)
        return child

    async def run(self, payload: bytes, bindings: Bindings) -> Reply:
        """Run one payload in a child. Returns the child's tagged reply.

        Cancelling the call kills the child (and starts a replacement); a child
        that dies while running it raises ``ChildDied``.
        """
        loop = asyncio.get_running_loop()
        child = await self._idle.get()
        # "kill" unless the child answered: it may still be running the task.
        disposal = "kill"
        try:
            child.conn.send((payload, bindings))
            reply: Reply = await loop.run_in_executor(self._io, child.conn.recv)
            child.tasks_run += 1
            limit = self.max_tasks_per_child
            disposal = "retire" if limit and child.tasks_run >= limit else "keep"
            return reply
        except (EOFError, OSError) as exc:
            await loop.run_in_executor(self._io, child.process.join, 5)
            raise ChildDied(_describe_exit(child.process.exitcode)) from exc
        finally:
            if disposal == "keep":
                self._idle.put_nowait(child)
            else:
                await self._retire(child, kill=disposal == "kill")
                if not self._closed:
                    self._idle.put_nowait(await self._spawn())

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
