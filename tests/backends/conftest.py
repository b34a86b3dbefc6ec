"""Fixtures that run the backend conformance suite once per storage backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sitq.backends.base import Backend
from sitq.backends.sqlite import SQLiteBackend

# The backends the conformance suite runs on. To add one (e.g. "postgres"), add its
# name here and a branch in `_new_backend` that opens a fresh, empty store for it, and
# one in `reclaim_immediately` if it throttles its search for expired leases.
BACKENDS = ["sqlite"]

OpenPeer = Callable[[], Awaitable[Backend]]


def _new_backend(kind: str, tmp_path: Path) -> Backend:
    """An unconnected backend on this test's store; every call opens the same store."""
    if kind == "sqlite":
        return SQLiteBackend(tmp_path / "tasks.db")
    raise ValueError(f"unknown backend {kind!r}")


def _kind(request: pytest.FixtureRequest) -> str:
    return request.node.callspec.params["backend"]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """A connected backend on a fresh, empty store."""
    store = _new_backend(request.param, tmp_path)
    await store.connect()
    yield store
    await store.close()


@pytest.fixture
async def open_peer(
    request: pytest.FixtureRequest, backend: Backend, tmp_path: Path
) -> AsyncIterator[OpenPeer]:
    """Opens more backend instances (own connections) on the same store as `backend`."""
    peers: list[Backend] = []

    async def open_one() -> Backend:
        peer = _new_backend(_kind(request), tmp_path)
        await peer.connect()
        peers.append(peer)
        return peer

    yield open_one
    for peer in peers:
        await peer.close()


@pytest.fixture
def reclaim_immediately(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every claim look for expired leases (SQLite does so at most once a second)."""
    if _kind(request) == "sqlite":
        monkeypatch.setattr("sitq.backends.sqlite.RECLAIM_INTERVAL", 0.0)
