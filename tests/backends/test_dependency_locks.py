"""Conformance: concurrent finishes of parents, and a retry beside them, never
deadlock, on every backend.

Each test makes the interleaving that deadlocked PostgreSQL happen every time: a
third connection holds one task row locked while the finishes (or a finish and a
retry) queue up behind it, then lets go. SQLite runs one writer at a time, so
there the same calls simply run one after the other; the tests check the outcome
on both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from conftest import OpenPeer
from test_dependencies import task

from sitq.backends.base import Backend, ClaimedTask, Dependency, Outcome


@asynccontextmanager
async def row_held(backend: Backend, task_id: str) -> AsyncIterator[Any]:
    """PostgreSQL: ``task_id``'s row locked by another connection for the block's
    time (yields that connection, or None on SQLite)."""
    if "postgres" not in type(backend).__name__.lower():
        yield None
        return
    import asyncpg

    conn = await asyncpg.connect(backend._dsn)  # type: ignore[attr-defined]
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(
            f'SELECT 1 FROM "{backend.schema}".sitq_tasks WHERE id = $1 FOR UPDATE',  # type: ignore[attr-defined]
            task_id,
        )
        try:
            yield conn
        finally:
            await tx.rollback()
    finally:
        await conn.close()


async def queued_behind(conn: Any, waiters: int, *calls: asyncio.Future[Any]) -> None:
    """Wait until ``waiters`` sessions wait, directly or in line, for the lock
    ``conn`` holds (none to wait for on SQLite), failing if a call ends first."""
    if conn is None:
        return
    holder = conn.get_server_pid()
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        rows = await conn.fetch(
            "SELECT pid, pg_blocking_pids(pid) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        )
        behind = {holder}
        for _ in rows:  # in line behind the holder, or behind one of those
            behind |= {pid for pid, blockers in rows if behind & set(blockers)}
        if len(behind) - 1 >= waiters:
            return
        assert asyncio.get_running_loop().time() < deadline, "the calls never waited"
        assert not any(call.done() for call in calls), "a call did not wait"
        await asyncio.sleep(0.01)


async def claim_in_order(backend: Backend, *ids_by_queue: list[str]) -> dict[str, ClaimedTask]:
    """Claim the tasks of queues q0, q1, ... with ever longer leases: a finish
    visits running rows in lease order (its plan reads the running tasks' index),
    so this sets the order in which each finish takes its rows."""
    claimed: dict[str, ClaimedTask] = {}
    for n, ids in enumerate(ids_by_queue):
        got = await backend.claim("w", [f"q{n}"], len(ids), 30.0 + 30 * n)
        assert {c.id for c in got} == set(ids)
        claimed |= {c.id: c for c in got}
    return claimed


def ended(claimed: dict[str, ClaimedTask], status: str, *ids: str) -> list[tuple[Any, Outcome]]:
    result = b"r" if status == "succeeded" else None
    return [(claimed[i].lease, Outcome(status, result=result, error="boom")) for i in ids]


def succeeded(claimed: dict[str, ClaimedTask], *ids: str) -> list[tuple[Any, Outcome]]:
    return ended(claimed, "succeeded", *ids)


@pytest.mark.parametrize("status", ["succeeded", "failed"])
async def test_batched_finishes_of_two_chords_members_in_any_order_never_deadlock(
    backend: Backend, open_peer: OpenPeer, status: str
) -> None:
    """Two workers each finish a member of both chords in one batch, in opposite
    orders. Locking each chord's callback as each member's row comes (a row
    trigger) took them in opposite orders too: a deadlock."""
    # m1, n2 before n1, m2 by id, by time stored and by lease: however the finish
    # statement visits its rows, the first worker ends m1 then n1, the other n2 then m2.
    m1, n1, n2, m2 = (task(backend)._replace(queue=q) for q in ("q0", "q1", "q0", "q1"))
    c1, c2 = task(backend), task(backend)
    await backend.enqueue_dependent(
        [m1, n1, n2, m2, c1, c2],
        [Dependency(c1.id, (m1.id, m2.id)), Dependency(c2.id, (n1.id, n2.id))],
    )
    claimed = await claim_in_order(backend, [m1.id, n2.id], [n1.id, m2.id])
    peer = await open_peer()
    async with row_held(backend, c1.id) as conn:
        first = asyncio.ensure_future(backend.finish(ended(claimed, status, m1.id, n1.id)))
        await queued_behind(conn, 1, first)
        second = asyncio.ensure_future(peer.finish(ended(claimed, status, n2.id, m2.id)))
        await queued_behind(conn, 2, first, second)
    assert await asyncio.wait_for(first, 20) == [True, True]
    assert await asyncio.wait_for(second, 20) == [True, True]
    if status == "failed":
        found = await backend.task_statuses([c1.id, c2.id])
        assert found == {c1.id: "cancelled", c2.id: "cancelled"}
        return
    due = await backend.claim("w", ["default"], 5, 30.0)
    assert {c.id for c in due} == {c1.id, c2.id}


async def test_a_batched_finish_never_deadlocks_with_a_retry_locking_the_parents(
    backend: Backend, open_peer: OpenPeer
) -> None:
    """A retry locks the dependents it brings back and their parents in id order;
    a batched finish of those parents, its rows in another order, must take them
    in that order too."""
    # p1's id sorts first, but the finish visits p2 first (its lease ends first).
    p1, p2, child = task(backend)._replace(queue="q1"), task(backend), task(backend)
    p2 = p2._replace(queue="q0")
    await backend.enqueue_dependent([p2, p1, child], [Dependency(child.id, (p1.id, p2.id))])
    assert await backend.cancel(child.id) == "cancelled"
    claimed = await claim_in_order(backend, [p2.id], [p1.id])
    peer = await open_peer()
    # A retry that meets a deadlock runs again once: here it must not meet one.
    peer._RETRY_AGAIN_ON = ()  # type: ignore[attr-defined]
    async with row_held(backend, p1.id) as conn:
        retry = asyncio.ensure_future(peer.retry([child.id]))
        await queued_behind(conn, 1, retry)
        finish = asyncio.ensure_future(backend.finish(succeeded(claimed, p2.id, p1.id)))
        await queued_behind(conn, 2, retry, finish)
    assert await asyncio.wait_for(retry, 20) == [child.id]
    assert await asyncio.wait_for(finish, 20) == [True, True]
    due = await backend.claim("w", ["default"], 5, 30.0)
    assert [c.id for c in due] == [child.id]


async def test_a_batched_release_never_deadlocks_with_a_retry_locking_the_parents(
    backend: Backend, open_peer: OpenPeer
) -> None:
    """The same for a worker giving tasks back (at its stop): release takes its rows
    in id order too."""
    p1, p2, child = task(backend)._replace(queue="q1"), task(backend), task(backend)
    p2 = p2._replace(queue="q0")
    await backend.enqueue_dependent([p2, p1, child], [Dependency(child.id, (p1.id, p2.id))])
    assert await backend.cancel(child.id) == "cancelled"
    claimed = await claim_in_order(backend, [p2.id], [p1.id])
    peer = await open_peer()
    peer._RETRY_AGAIN_ON = ()  # type: ignore[attr-defined]
    async with row_held(backend, p1.id) as conn:
        retry = asyncio.ensure_future(peer.retry([child.id]))
        await queued_behind(conn, 1, retry)
        release = asyncio.ensure_future(
            backend.release([claimed[p2.id].lease, claimed[p1.id].lease])
        )
        await queued_behind(conn, 2, retry, release)
    assert await asyncio.wait_for(retry, 20) == [child.id]
    assert await asyncio.wait_for(release, 20) == 2
    assert await backend.task_statuses([p1.id, p2.id, child.id]) == {
        p1.id: "queued",
        p2.id: "queued",
        child.id: "queued",
    }
