"""Cross-process wake-up hints for the SQLite backend.

SQLite has no LISTEN/NOTIFY, so each process that waits (a worker for tasks, a
producer for results) binds a Unix datagram socket in a per-database folder,
and each writer sends one byte to every socket there after it commits. A lost
or late datagram costs only latency: every waiter also polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import tempfile
import time
from pathlib import Path

from sitq.backends.base import WakeKind

_KINDS: tuple[WakeKind, ...] = ("tasks", "results")
#: Seconds between looks at who is listening (a new listener's first wake-up
#: may wait for its own poll, at most 50 ms, meanwhile).
PEER_REFRESH = 0.05


def wake_directory(database_path: str) -> Path:
    """A short, private folder for one database's sockets (socket paths are limited
    to about 100 bytes, so it lives in the temp dir, keyed by the database's path)."""
    digest = hashlib.sha256(os.path.realpath(database_path).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"sitq-{os.getuid()}" / digest


class WakeupChannel:
    """Sends and receives wake-up hints between processes sharing one database."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._sender: socket.socket | None = None
        self._peers: dict[WakeKind, tuple[float, int, list[str]]] = {}
        self._listeners: dict[WakeKind, socket.socket] = {}
        self._own_paths: set[str] = set()
        self._events: dict[WakeKind, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broken = False  # cannot send (no sockets at all here)
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
                # Its process is gone: tidy the stale socket away.
                with contextlib.suppress(OSError):
                    os.unlink(path)
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
        try:
            mtime = os.stat(directory).st_mtime_ns
            if cached is not None and cached[1] == mtime:
                paths = cached[2]
            else:
                paths = [os.path.join(directory, name) for name in os.listdir(directory)]
        except OSError:  # not there (yet, or any more): no one to wake
            paths, mtime = [], 0
        self._peers[kind] = (now, mtime, paths)
        return paths

    async def wait(self, kind: WakeKind, timeout: float) -> None:
        """Return on a wake-up for ``kind`` or after ``timeout`` seconds.

        A wake-up that arrives while no one waits is kept for the next waiter,
        so one that lands between a caller's check and its wait is not lost.
        """
        event = self._events.get(kind)
        if event is None:
            event = self._events[kind] = asyncio.Event()
            self._listen(kind)
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
        directory = self._kind_dir(kind)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = str(directory / f"{os.getpid()}-{os.urandom(4).hex()}")
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
        for path in self._own_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        for kind in _KINDS:  # tidy the folders once the last listener has gone
            with contextlib.suppress(OSError):
                self._kind_dir(kind).rmdir()
        with contextlib.suppress(OSError):
            self._directory.rmdir()
        if self._sender is not None:
            self._sender.close()
        self._listeners.clear()
        self._own_paths.clear()
        self._events.clear()
        self._sender = None
