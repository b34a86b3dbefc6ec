"""Cross-process wake-up hints for the SQLite backend.

SQLite has no LISTEN/NOTIFY, so each process that waits (a worker for tasks, a
producer for results) binds a Unix datagram socket in a per-database folder,
and each writer sends one byte to every socket there after it commits. A lost
or late datagram costs only latency: every waiter also polls.

The folder lives in the temp dir, ``sitq-<uid>/<hash of the db path>/``, because
a socket's path is limited to about 100 bytes (beside a database in a deep
directory it would not fit). The temp dir is shared with other users, so the
folder is trusted only if it is a real directory (never a symlink) owned by
this user; each level is opened with ``O_NOFOLLOW``, checked with ``fstat``
and made 0700 (an older sitq made its folders with the umask's mode, 0775
under umask 002) before anything in it is used. A folder that is not ours
disables the wake-ups (with one warning): everything
still works by polling. Only entries named like sitq's sockets and that are
sockets owned by this user are ever removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from sitq.backends.base import WakeKind

logger = logging.getLogger("sitq.sqlite")

_KINDS: tuple[WakeKind, ...] = ("tasks", "results", "cancels", "progress")
#: Seconds between looks at who is listening (a new listener's first wake-up
#: may wait for its own poll, at most 50 ms, meanwhile).
PEER_REFRESH = 0.05
#: A folder's mtime may lag a change by up to a timestamp tick (a few ms on tmpfs
#: and ext4; whole seconds on some file systems): a listing made within this many
#: ns of the mtime may miss a change of that same tick, and is not trusted.
MTIME_TICK_NS = 2_500_000_000
#: What _peer_paths remembers of a kind's folder that was not there.
MISSING = -1
#: The names sitq gives its sockets: ``<pid>-<8 hex digits>``.
_SOCKET_NAME = re.compile(r"\A[0-9]+-[0-9a-f]{8}\Z")
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)


def wake_directory(database_path: str) -> Path:
    """A short, private folder for one database's sockets (socket paths are limited
    to about 100 bytes, so it lives in the temp dir, keyed by the database's path)."""
    digest = hashlib.sha256(os.path.realpath(database_path).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"sitq-{os.getuid()}" / digest


def remove_database_folder(directory: Path) -> None:
    """Remove a database's folder (``wake_directory``) if it is empty; else leave it."""
    with contextlib.suppress(OSError), private_dir(directory.parent, 1) as fd:
        os.rmdir(directory.name, dir_fd=fd)


class UnsafeWakeDirectory(OSError):
    """A folder on the wake-up path is not a private directory of this user."""


def _check_private(fd: int, path: str) -> None:
    """Raise UnsafeWakeDirectory unless ``fd`` is a directory of ours; make it
    private (0700) if it is not yet.

    An older sitq made its folders with ``mkdir(parents=True)``, so 0755 or, under
    umask 002, 0775: being ours, they are tightened, not refused (refusing turned
    wake-ups off for good after an upgrade). Tightening is safe since only the owner
    can chmod; anything others planted meanwhile is still checked at its own level:
    a folder of theirs or a symlink is refused, and only sockets of ours are removed."""
    info = os.fstat(fd)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeWakeDirectory(f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        raise UnsafeWakeDirectory(f"{path} is owned by uid {info.st_uid}, not by this user")
    if info.st_mode & 0o077:
        os.fchmod(fd, 0o700)


@contextlib.contextmanager
def private_dir(path: Path, levels: int, *, create: bool = False) -> Iterator[int]:
    """An fd of ``path`` whose last ``levels`` components were each opened without
    following a symlink (and made, 0700, if ``create``) and checked as ours.

    The components above them (the temp dir) are the system's and are trusted.
    """
    shown = path.parents[levels - 1]
    fd = os.open(shown, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for name in path.parts[-levels:]:
            shown = shown / name
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=fd)
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafeWakeDirectory(f"{shown} is a symlink or not a directory") from exc
                raise
            os.close(fd)
            fd = child
            _check_private(fd, str(shown))
        yield fd
    finally:
        os.close(fd)


class WakeupChannel:
    """Sends and receives wake-up hints between processes sharing one database."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._sender: socket.socket | None = None
        # kind: (when looked, (inode, mtime) of the folder listed, MISSING, or 0 if
        # unknown; its sockets)
        self._peers: dict[WakeKind, tuple[float, tuple[int, int] | int, list[str]]] = {}
        self._listeners: dict[WakeKind, socket.socket] = {}
        self._own_paths: set[str] = set()
        self._events: dict[WakeKind, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broken = False  # cannot send (no sockets here, or the folder is not ours)
        self._cannot_listen = False
        self._dir_strings: dict[WakeKind, str] = {}

    def _kind_dir(self, kind: WakeKind) -> Path:
        return self._directory / kind[0]

    def _kind_dir_str(self, kind: WakeKind) -> str:
        # notify() runs per commit: a plain string spares it pathlib's cost.
        path = self._dir_strings.get(kind)
        if path is None:
            path = self._dir_strings[kind] = str(self._kind_dir(kind))
        return path

    def _kind_fd(self, kind: WakeKind, *, create: bool = False) -> AbstractContextManager[int]:
        # sitq-<uid>, <digest> and the kind's folder are each checked.
        return private_dir(self._kind_dir(kind), 3, create=create)

    def _refuse(self, exc: UnsafeWakeDirectory) -> None:
        """Stop using the folder for good: waiters poll instead."""
        if not (self._broken and self._cannot_listen):
            logger.warning(
                "sitq wake-ups are off for this database: %s. Tasks and results are "
                "still found by polling, only later. It is not a folder of this "
                "user's: remove that path, or point TMPDIR at a private directory.",
                exc,
            )
        self._broken = self._cannot_listen = True
        self._peers.clear()

    def notify(self, kind: WakeKind) -> None:
        """Wake every process waiting for ``kind``, this one included. Never raises."""
        self._wake_local(kind)
        self._send_to_peers(kind)

    def notify_threadsafe(self, kind: WakeKind) -> None:
        """``notify`` from a thread other than the event loop's."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._wake_local, kind)
        self._send_to_peers(kind)

    def _send_to_peers(self, kind: WakeKind) -> None:
        if self._broken:
            return
        if self._sender is None:
            try:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sender.setblocking(False)
            except OSError:
                self._broken = True  # no Unix sockets here: waiters poll
                return
        for path in self._peer_paths(kind):
            if path in self._own_paths:
                continue
            try:
                self._sender.sendto(b"!", path)
            except (ConnectionRefusedError, FileNotFoundError):
                self._remove_stale(kind, os.path.basename(path))  # its process is gone
            except OSError:
                pass  # e.g. its buffer is full: it has a wake-up pending already

    def _peer_paths(self, kind: WakeKind) -> list[str]:
        # The folder is looked at again at most every PEER_REFRESH seconds: a
        # process that starts listening meanwhile is woken by its poll instead.
        now = time.monotonic()
        cached = self._peers.get(kind)
        if cached is not None and now - cached[0] < PEER_REFRESH:
            return cached[2]
        directory = self._kind_dir_str(kind)
        if cached is not None and cached[1]:
            # One stat: the very folder listed last time, unchanged since (same
            # inode and mtime), keeps its checked list, and one still missing its
            # empty one. The checked walk below is a dozen system calls, each a
            # chance for another thread to take the GIL.
            try:
                info = os.stat(directory, follow_symlinks=False)
                now_seen: tuple[int, int] | int = (info.st_ino, info.st_mtime_ns)
            except FileNotFoundError:
                now_seen = MISSING
            except OSError:
                now_seen = 0
            if now_seen == cached[1]:
                self._peers[kind] = (now, cached[1], cached[2])
                return cached[2]
        seen: tuple[int, int] | int = 0
        paths: list[str] = []
        try:
            with self._kind_fd(kind) as fd:
                info = os.fstat(fd)
                paths = [
                    os.path.join(directory, name)
                    for name in os.listdir(fd)
                    if _SOCKET_NAME.match(name)
                ]
                # A folder's mtime moves in ticks: a socket bound in the tick of this
                # listing would leave it unchanged. Such a listing is not kept as
                # the folder's (the next look lists again; see MTIME_TICK_NS).
                if time.time_ns() - info.st_mtime_ns > MTIME_TICK_NS:
                    seen = (info.st_ino, info.st_mtime_ns)
        except UnsafeWakeDirectory as exc:
            self._refuse(exc)
            return []
        except FileNotFoundError:  # not there (yet, or any more): no one to wake
            seen = MISSING
        except OSError:
            pass
        self._peers[kind] = (now, seen, paths)
        return paths

    def _remove_stale(self, kind: WakeKind, name: str) -> None:
        """Unlink a dead peer's socket: only a socket of ours with a sitq name, in
        the checked folder (through its fd, so no symlink can redirect it)."""
        if not _SOCKET_NAME.match(name):
            return
        with contextlib.suppress(OSError), self._kind_fd(kind) as fd:
            info = os.lstat(name, dir_fd=fd)
            if stat.S_ISSOCK(info.st_mode) and info.st_uid == os.geteuid():
                os.unlink(name, dir_fd=fd)

    def hears(self, kind: WakeKind) -> bool:
        """True once this process listens for ``kind`` (its first ``wait`` binds
        the socket; a refused folder or no Unix sockets leave it deaf)."""
        return kind in self._listeners and not self._broken

    async def wait(self, kind: WakeKind, timeout: float, deaf_timeout: float | None = None) -> None:
        """Return on a wake-up for ``kind`` or after ``timeout`` seconds (after
        ``deaf_timeout``, if given, when this process cannot listen for ``kind``).

        A wake-up that arrives while no one waits is kept for the next waiter,
        so one that lands between a caller's check and its wait is not lost.
        """
        event = self._events.get(kind)
        if event is None:
            event = self._events[kind] = asyncio.Event()
            self._listen(kind)
        if deaf_timeout is not None and not self.hears(kind):
            timeout = min(timeout, deaf_timeout)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        # Every coroutine waiting now has been woken; later waiters start afresh.
        event.clear()

    def _wake_local(self, kind: WakeKind) -> None:
        event = self._events.get(kind)
        if event is not None:
            event.set()

    def _listen(self, kind: WakeKind) -> None:
        if self._cannot_listen or kind in self._listeners:
            return
        sock = None
        for _ in range(3):  # another process may remove the empty folder meanwhile
            try:
                sock = self._bind(kind)
                break
            except UnsafeWakeDirectory as exc:
                self._refuse(exc)
                return
            except FileNotFoundError:
                continue
            except OSError:
                break
        if sock is None:
            self._cannot_listen = True  # polling alone still works
            return
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._on_readable, kind, sock)
        self._listeners[kind] = sock

    def _bind(self, kind: WakeKind) -> socket.socket:
        # Made and checked first; the checked folder stays ours (0700, and the
        # temp dir's sticky bit keeps other users from renaming it).
        with self._kind_fd(kind, create=True):
            pass
        path = os.path.join(self._kind_dir_str(kind), f"{os.getpid()}-{os.urandom(4).hex()}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.bind(path)
        except OSError:
            sock.close()
            raise
        self._own_paths.add(path)
        return sock

    def _on_readable(self, kind: WakeKind, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while sock.recv(64):
                pass
        self._wake_local(kind)

    def close(self) -> None:
        """Stop listening and remove this process's sockets."""
        for sock in self._listeners.values():
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(sock.fileno())
            sock.close()
        for kind in self._listeners:
            self._tidy(kind)
        if self._listeners:  # the database's folder, once its last listener has gone
            with contextlib.suppress(OSError), private_dir(self._directory, 2) as fd:
                for kind in _KINDS:
                    with contextlib.suppress(OSError):
                        os.rmdir(kind[0], dir_fd=fd)
            remove_database_folder(self._directory)
        if self._sender is not None:
            self._sender.close()
        self._listeners.clear()
        self._own_paths.clear()
        self._events.clear()
        self._sender = None

    def _tidy(self, kind: WakeKind) -> None:
        """Unlink this process's own socket of ``kind``, through the checked folder."""
        prefix = self._kind_dir_str(kind) + os.sep
        for path in [p for p in self._own_paths if p.startswith(prefix)]:
            with contextlib.suppress(OSError), self._kind_fd(kind) as fd:
                os.unlink(path[len(prefix) :], dir_fd=fd)
