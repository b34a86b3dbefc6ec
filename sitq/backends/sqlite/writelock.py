"""A hand-over lock in front of SQLite's write lock, shared by sitq's processes.

SQLite lets one connection write at a time. A connection that finds the write
lock taken sleeps in SQLite's busy handler, 1, 2, 5, 10 ms and longer between
tries, so the lock is often free for milliseconds while every waiter sleeps.
With two worker processes on one file, each writing every millisecond or two,
that idle time ate nearly all the second process's gain (two processes drained
1.0-1.2x one).

sitq's connections therefore queue for an advisory ``flock`` on a file in the
database's wake-up folder before each write transaction, and wait for it in
short naps: while processes contend, the next writer starts within about 0.1 ms
of the last one's commit (see CONTENDED_FOR).
The lock only orders sitq's writers: SQLite's own lock still decides, so a
writer that does not take it (another program, the sqlite3 shell) is waited for
as before, and a waiter that could not get it within its patience writes anyway
(SQLite's busy handler then waits, as it would without this lock). A process
that dies holding it loses it with its file descriptor (a child it forked
without exec shares that file, and keeps the lock while it lives; sitq itself
only spawns). The folder is per user and per temp dir, so only processes that
share both take turns; any others wait in SQLite's busy handler, as before.

The file is removed when a process closes the database while no one writes (the
wake-up folder is tidied away with the last listener): whoever then takes the
lock through a file no longer in the folder (it has no name left) opens the
folder's file again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from pathlib import Path

from sitq.backends.sqlite.wakeup import UnsafeWakeDirectory, private_dir, remove_database_folder

logger = logging.getLogger("sitq.sqlite")

#: The lock file's name in the database's wake-up folder.
LOCK_NAME = "write.lock"
#: Naps between tries while another process writes: short at first (a write
#: transaction of the hot path takes 0.2-3 ms), longer once it lasts.
SHORT_NAP = 50e-6
LONG_NAP = 1e-3
SHORT_NAPS_FOR = 0.005
#: Seconds a writer waits in line before it writes anyway (SQLite's busy handler
#: then waits for the lock as usual). Short, because a transaction whose body
#: runs on the event loop (the layers' stores) holds the lock across its loop's
#: turns: a loop blocked by a task must not stall the other processes for long.
WRITE_PATIENCE = 0.1
#: Seconds after the last time another process held the lock during which this
#: one hands it over on the database thread, right after its commit. Alone, it
#: lets go on the event loop: every system call on the database thread gives the
#: GIL away, and a busy loop may keep it for its whole switch interval (5 ms),
#: which made a lone worker's transactions hold the thread twice as long.
CONTENDED_FOR = 1.0


class WriteLock:
    """One connection's place in the queue for the database's write lock.

    ``try_acquire`` and ``release`` never block; ``wait`` naps until the lock is
    free or its patience runs out. The event loop and the database thread both
    call them, never at once: the backend runs one statement or transaction at a
    time on its connection. Each instance has its own open file, so two
    connections of one process exclude each other too. Each hold has a number, so
    a release meant for an earlier hold (queued on the database thread by a
    transaction cancelled at shutdown) cannot end a later one.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._fd: int | None = None
        self._disabled = False  # no usable folder: every write goes straight to SQLite
        self._held = False
        self._hold = 0  # numbers the holds: see release()
        self._refused_at = -CONTENDED_FOR  # monotonic time another process last held it
        self._guard = threading.Lock()  # the fd is opened and closed from two threads

    def _file(self) -> int | None:
        with self._guard:
            if self._fd is None and not self._disabled:
                try:
                    with private_dir(self._directory, 2, create=True) as folder:
                        self._fd = os.open(
                            LOCK_NAME,
                            os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC,
                            0o600,
                            dir_fd=folder,
                        )
                except (OSError, UnsafeWakeDirectory) as exc:
                    # Only the hand-over is lost: SQLite's lock still orders writers.
                    logger.debug("no write hand-over lock in %s: %s", self._directory, exc)
                    self._disabled = True
            return self._fd

    def try_acquire(self) -> bool:
        """Take the lock if it is free (or unusable); False if another holds it."""
        while True:
            fd = self._file()
            if fd is None:
                return True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._refused_at = time.monotonic()
                return False
            except OSError:
                return True  # a file system without flock: SQLite alone orders writers
            if self._is_the_folders(fd):
                with self._guard:
                    self._held = True
                    self._hold += 1
                return True
            self._reopen(fd)  # removed by a closing process: queue on the new file

    def _is_the_folders(self, fd: int) -> bool:
        # Only a holder of this very file unlinks it, and nothing else links it: it
        # is still the folder's exactly while it has a name (one fstat, no path).
        try:
            return os.fstat(fd).st_nlink > 0
        except OSError:
            return False

    def _reopen(self, fd: int) -> None:
        with self._guard:
            if self._fd == fd:
                self._fd = None
        os.close(fd)

    def wait(self, patience: float) -> int:
        """Nap until the lock is taken (1) or ``patience`` seconds pass (0)."""
        began = time.monotonic()
        while True:
            if self.try_acquire():
                return 1
            waited = time.monotonic() - began
            if waited >= patience:
                return 0
            time.sleep(SHORT_NAP if waited < SHORT_NAPS_FOR else LONG_NAP)

    @property
    def held(self) -> bool:
        """Whether this connection holds the lock."""
        return self._held

    @property
    def contended(self) -> bool:
        """Whether another process held the lock lately (see CONTENDED_FOR): the
        holder should then let go on the database thread, right after its commit."""
        return time.monotonic() - self._refused_at < CONTENDED_FOR

    @property
    def hold(self) -> int:
        """The number of the current (or last) hold, for ``release``."""
        return self._hold

    def release(self, hold: int | None = None) -> int:
        """Let the next writer in (a no-op unless held, or if ``hold`` names an
        earlier hold). The database thread calls it right after a commit (the event
        loop may be busy for milliseconds before it hears of the commit), the event
        loop after a failed transaction."""
        with self._guard:
            if self._held and (hold is None or hold == self._hold):
                self._held = False
                if self._fd is not None:
                    with contextlib.suppress(OSError):
                        fcntl.flock(self._fd, fcntl.LOCK_UN)
        return 0

    def close(self) -> None:
        """Release the lock and close its file; remove the file (and the folder,
        if nothing else is left in it) unless another process is writing."""
        self.release()
        with self._guard:
            fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if self._is_the_folders(fd):
                with private_dir(self._directory, 2) as folder:
                    os.unlink(LOCK_NAME, dir_fd=folder)
                remove_database_folder(self._directory)
        except (OSError, UnsafeWakeDirectory):
            pass  # in use, or the folder holds others' sockets: left as it is
        finally:
            os.close(fd)
