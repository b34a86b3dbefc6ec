"""Fixtures that run the backend conformance suite once per storage backend."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from support import drop_postgres_schema, postgres_available, postgres_url

from sitq.backends.base import Backend
from sitq.backends.sqlite import SQLiteBackend

# The backends the conformance suite runs on. To add one, add its name here and a
# branch in `_new_backend` that opens a fresh, empty store for it.
# "sqlite-text" is a SQLite file that keeps text task ids, as files made before
# schema version 13 do (a new file keeps integer row ids).
BACKENDS = ["sqlite", "sqlite-text", "postgres"]

OpenPeer = Callable[[], Awaitable[Backend]]


def _new_backend(kind: str, tmp_path: Path) -> Backend:
    """An unconnected backend on this test's store; every call opens the same store."""
    if kind in ("sqlite", "sqlite-text"):
        return SQLiteBackend(tmp_path / "tasks.db")
    if kind == "postgres":
        from sitq.backends.postgres import PostgresBackend

        return PostgresBackend(postgres_url(_schema_for(tmp_path)))
    raise ValueError(f"unknown backend {kind!r}")


def _schema_for(tmp_path: Path) -> str:
    """One PostgreSQL schema per test (tmp_path is unique per test)."""
    return "t_" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:16]


def _kind(request: pytest.FixtureRequest) -> str:
    return request.node.callspec.params["backend"]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """A connected backend on a fresh, empty store."""
    if request.param == "postgres":
        reason = postgres_available()
        if reason:
            pytest.skip(reason)
        await drop_postgres_schema(_schema_for(tmp_path))
    store = _new_backend(request.param, tmp_path)
    await store.connect()
    if request.param == "sqlite-text":
        assert isinstance(store, SQLiteBackend) and await store.use_text_ids()
    yield store
    await store.close()
    if request.param == "postgres":
        await drop_postgres_schema(_schema_for(tmp_path))


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
    """Make every claim look for expired leases (backends do so at most once a second)."""
    monkeypatch.setattr("sitq.backends.common.RECLAIM_INTERVAL", 0.0)
