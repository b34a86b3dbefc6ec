"""``sitq worker --processes N``: one supervisor process running N ``sitq worker``
children, each with its own event loop and database connection.

The supervisor knows nothing of queues or databases: it starts a command N
times, restarts a child that dies while it should be serving (with a backoff;
it gives up, stopping the others, when children keep dying at once), forwards
SIGTERM/SIGINT so every child drains, and exits 0 once all have exited 0.

A child is told its supervisor's id (``--supervisor ID``); it names itself
``ID/PID`` (see :func:`sitq.overview.supervised_name`), so ``sitq status`` shows
the children under their supervisor, and it arms a death signal
(:func:`follow_supervisor`): if the supervisor is killed outright, its children
drain and exit rather than serve on unsupervised.

Children run in a session of their own, so a Ctrl-C at a terminal reaches only
the supervisor, which forwards one SIGTERM: a child gets one signal, not two (a
second would stop it at once).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

from sitq.errors import SitqError

logger = logging.getLogger("sitq.supervisor")

#: A child that exits within this many seconds of its start died "at once".
QUICK_DEATH = 10.0
#: After this many deaths at once in a row (any children), the supervisor gives up.
QUICK_DEATH_LIMIT = 5
#: The first restart delay after a death at once; it doubles with each one in a
#: row of that child, up to MAX_BACKOFF. A child that ran longer restarts at once.
FIRST_BACKOFF = 0.25
MAX_BACKOFF = 15.0

#: prctl(2) option: the signal this process gets when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1


class SupervisorGaveUp(SitqError):
    """The children kept dying at once: the supervisor stopped them all."""


def new_supervisor_id() -> str:
    """An id for this process as a supervisor: ``HOST-PID-RANDOM``, as a worker's."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


def supervisor_pid(supervisor_id: str) -> int:
    """The process id inside an id from :func:`new_supervisor_id`."""
    try:
        return int(supervisor_id.rsplit("-", 2)[-2])
    except (IndexError, ValueError):
        raise SitqError(
            f"--supervisor {supervisor_id!r} is not a supervisor id (HOST-PID-RANDOM); it "
            "is set by `sitq worker --processes N` for its children, not by hand"
        ) from None


def follow_supervisor(pid: int) -> None:
    """In a child: get SIGTERM (a graceful drain) when supervisor ``pid`` dies, even
    by SIGKILL; exit at once if it is already gone. Linux arms the kernel's parent
    death signal; elsewhere a thread watches the parent process id."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    else:  # pragma: no cover - exercised on Linux only
        threading.Thread(target=_watch_parent, args=(pid,), daemon=True).start()
    if os.getppid() != pid:
        # It died before the death signal was armed: nobody would stop this child.
        raise SitqError(f"the supervisor (pid {pid}) is gone; not starting")


def _watch_parent(pid: int) -> None:  # pragma: no cover - non-Linux fallback
    while os.getppid() == pid:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


@dataclass(eq=False)
class _Child:
    """One of the N places; its process is replaced when it dies."""

    slot: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    quick_deaths: int = 0  # in a row, this slot
    restart_at: float | None = None  # when a dead child is due to start again
    finished: int | None = None  # the exit status that ended this slot (burst, stop)


class Supervisor:
    """Run ``command`` as ``processes`` children until signalled (or, ``burst``,
    until every child has exited on its own), then return the exit status: 0 when
    every child ended 0, else 1. Raises :class:`SupervisorGaveUp` when children
    keep dying at once.

    ``command`` is the child's full argument list; ``env`` its environment.
    Without ``burst`` a child that exits while the supervisor is not stopping is
    restarted, whatever its status; with ``burst`` one that exits with a status
    has finished (only a child killed by a signal is restarted).
    """

    def __init__(
        self,
        command: Sequence[str],
        processes: int,
        *,
        env: Mapping[str, str] | None = None,
        burst: bool = False,
        supervisor_id: str | None = None,
    ) -> None:
        if processes < 1:
            raise SitqError(f"processes must be at least 1, got {processes}")
        self.command = list(command)
        self.env = dict(os.environ if env is None else env)
        self.burst = burst
        self.id = supervisor_id or new_supervisor_id()
        self.children = [_Child(slot) for slot in range(processes)]
        self._signals: list[int] = []
        self._stopping = False
        self._quick_in_a_row = 0
        self._gave_up: str | None = None

    def run(self) -> int:
        """Supervise until done; the exit status for the command."""
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        }
        previous_wakeup = signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        try:
            logger.info("supervisor %s: starting %d worker processes", self.id, len(self.children))
            for child in self.children:
                self._start(child)
            while not self._done():
                self._handle_signals()
                self._reap()
                self._restart_due()
                if self._done():
                    break
                with contextlib.suppress(InterruptedError):
                    select.select([wake_read], [], [], self._timeout())
                with contextlib.suppress(BlockingIOError):
                    while wake_read.recv(512):
                        pass
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            wake_read.close()
            wake_write.close()
        if self._gave_up is not None:
            raise SupervisorGaveUp(self._gave_up)
        failed = [c for c in self.children if c.finished != 0]
        if failed:
            statuses = {c.finished for c in failed}
            why = ", ".join(
                sorted(_describe(s) if s is not None else "no exit status" for s in statuses)
            )
            if self.burst and statuses == {1}:
                # Not a crash: a burst worker exits 1 when a task of its run failed.
                why = "with --burst, status 1: some of their tasks failed (see 'burst done')"
            logger.error(
                "supervisor %s: %d of %d worker processes exited with an error (%s)",
                self.id,
                len(failed),
                len(self.children),
                why,
            )
            return 1
        logger.info("supervisor %s: every worker process exited cleanly", self.id)
        return 0

    # -- the loop's steps -------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum != signal.SIGCHLD:
            self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            name = signal.Signals(self._signals.pop(0)).name
            live = [c for c in self.children if c.process is not None]
            if not self._stopping:
                logger.info(
                    "supervisor %s: %s received, draining %d worker processes "
                    "(again to stop them at once)",
                    self.id,
                    name,
                    len(live),
                )
                self._stop()
            else:
                logger.warning(
                    "supervisor %s: %s received again, stopping the workers at once",
                    self.id,
                    name,
                )
                self._terminate(live)

    def _stop(self) -> None:
        """Drain every child: one SIGTERM each; what waits to restart never will."""
        self._stopping = True
        for child in self.children:
            if child.process is None and child.finished is None:
                child.restart_at = None
                child.finished = 0
        self._terminate([c for c in self.children if c.process is not None])

    @staticmethod
    def _terminate(children: Sequence[_Child]) -> None:
        for child in children:
            assert child.process is not None
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)

    def _reap(self) -> None:
        for child in self.children:
            if child.process is None:
                continue
            status = child.process.poll()
            if status is not None:
                self._exited(child, child.process, status)

    def _exited(self, child: _Child, process: subprocess.Popen[bytes], status: int) -> None:
        child.process = None
        lived = time.monotonic() - child.started
        if self._stopping:
            # SIGTERM before it could install its handlers: it held nothing yet.
            child.finished = 0 if status in (0, -signal.SIGTERM) else status
            if child.finished:
                logger.error(
                    "supervisor %s: worker process %d exited with %s while draining",
                    self.id,
                    process.pid,
                    _describe(status),
                )
            return
        if self.burst and status >= 0:
            child.finished = status  # it ran until nothing was left: done
            return
        quick = lived < QUICK_DEATH
        child.quick_deaths = child.quick_deaths + 1 if quick else 0
        self._quick_in_a_row = self._quick_in_a_row + 1 if quick else 0
        if self._quick_in_a_row >= QUICK_DEATH_LIMIT:
            self._gave_up = (
                f"supervisor {self.id}: worker processes died within {QUICK_DEATH:g} s of "
                f"starting {self._quick_in_a_row} times in a row (the last {_describe(status)}); "
                "giving up and stopping the others. Their errors are above; "
                "`sitq worker --check` with the same options says what is wrong"
            )
            logger.critical("%s", self._gave_up)
            self._stop()
            return
        delay = (
            min(FIRST_BACKOFF * 2 ** (child.quick_deaths - 1), MAX_BACKOFF)
            if child.quick_deaths
            else 0.0
        )
        child.restart_at = time.monotonic() + delay
        logger.warning(
            "supervisor %s: worker process %d %s after %.1f s; restarting it in %.2f s",
            self.id,
            process.pid,
            _describe(status),
            lived,
            delay,
        )

    def _restart_due(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None and child.restart_at <= now and not self._stopping:
                self._start(child)

    def _start(self, child: _Child) -> None:
        child.restart_at = None
        child.started = time.monotonic()
        child.process = subprocess.Popen(
            [*self.command, "--supervisor", self.id],
            env=self.env,
            stdin=subprocess.DEVNULL,
            # Its own session: a terminal's Ctrl-C reaches the supervisor only.
            start_new_session=True,
        )
        logger.info(
            "supervisor %s: worker process %d started (slot %d)",
            self.id,
            child.process.pid,
            child.slot + 1,
        )

    def _done(self) -> bool:
        return all(c.finished is not None for c in self.children)

    def _timeout(self) -> float:
        """How long the loop may sleep: until the next restart is due (a signal or
        a child's exit wakes it through the wake-up socket before that)."""
        due = [c.restart_at for c in self.children if c.restart_at is not None]
        if not due:
            return 10.0
        return max(0.0, min(due) - time.monotonic())


def _describe(status: int) -> str:
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-status).name}"
        return f"was killed by signal {-status}"
    return f"exited with status {status}"
