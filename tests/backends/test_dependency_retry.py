"""Conformance: a retry inside a dependency graph, on every backend.

A retried parent is unfinished again, so whatever had counted it as finished
waits for it again: a "run" dependent still queued, and the "cancel" dependents
its failure had cancelled (which come back only if no other parent of theirs
failed meanwhile). Real backends, real transactions; the worker is played by
claim/finish.
"""

from __future__ import annotations

import asyncio

import pytest
from support import task_ids_for
from test_dependencies import chain, statuses, task

from sitq.backends.base import Backend, Dependency, Outcome


async def due(backend: Backend) -> set[str]:
    """The ids a worker may claim now (claimed and released again at once)."""
    claimed = await backend.claim("peek", ["default"], 50, 30.0)
    if claimed:
        await backend.release([c.lease for c in claimed])
    return {c.id for c in claimed}


async def finish(backend: Backend, task_id: str, status: str = "succeeded") -> None:
    """Claim what is due, end ``task_id`` with ``status`` and release the rest."""
    claimed = await backend.claim("w", ["default"], 50, 30.0)
    mine = [c for c in claimed if c.id == task_id]
    assert mine, f"{task_id} was not due"
    await backend.release([c.lease for c in claimed if c.id != task_id])
    outcome = Outcome(status, result=b"r" if status == "succeeded" else None, error="boom")
    assert await backend.finish([(mine[0].lease, outcome)]) == [True]


async def waiting(backend: Backend, task_id: str) -> int:
    links = await backend.task_links(task_id)
    assert links is not None
    return links.waiting


async def test_a_run_dependent_waits_again_for_a_retried_parent(backend: Backend) -> None:
    """It had counted its failed parent as finished; once that parent is queued
    again it must not start when its other parent finishes."""
    p1, p2 = task(backend), task(backend)
    await backend.enqueue([p1, p2])
    child = task(backend)
    await backend.enqueue_dependent([child], [Dependency(child.id, (p1.id, p2.id), "run")])
    await finish(backend, p1.id, "failed")
    assert await waiting(backend, child.id) == 1
    assert await backend.retry([p1.id]) == [p1.id]
    assert await waiting(backend, child.id) == 2
    await finish(backend, p2.id)
    assert await due(backend) == {p1.id}  # not the child: p1 runs again first
    await finish(backend, p1.id)
    assert await due(backend) == {child.id}


async def test_a_due_run_dependent_not_yet_claimed_waits_again(backend: Backend) -> None:
    ids = await chain(backend, 2, mode="run")
    await finish(backend, ids[0], "failed")
    assert await due(backend) == {ids[1]}
    await backend.retry([ids[0]])
    assert await due(backend) == {ids[0]}
    await finish(backend, ids[0])
    assert await due(backend) == {ids[1]}


async def test_a_dependent_whose_parents_all_succeeded_meanwhile_is_due_at_once(
    backend: Backend,
) -> None:
    """Cancelled by the root's failure, its own parent retried alone and
    succeeded: the root's retry brings it back due, not waiting for nothing."""
    ids = await chain(backend, 3)
    await finish(backend, ids[0], "failed")
    assert await backend.retry([ids[1]]) == [ids[1]]  # runs although its parent failed
    await finish(backend, ids[1])
    assert await statuses(backend, ids) == ["failed", "succeeded", "cancelled"]
    await backend.retry([ids[0]])
    assert await statuses(backend, ids) == ["queued", "succeeded", "queued"]
    assert await waiting(backend, ids[2]) == 0
    assert await due(backend) == {ids[0], ids[2]}


async def test_a_dependent_with_another_failed_parent_stays_cancelled_naming_it(
    backend: Backend,
) -> None:
    p1, p2 = task(backend), task(backend)
    await backend.enqueue([p1, p2])
    child = task(backend)
    await backend.enqueue_dependent([child], [Dependency(child.id, (p1.id, p2.id))])
    await finish(backend, p1.id, "failed")
    await finish(backend, p2.id, "failed")
    await backend.retry([p1.id])
    assert await statuses(backend, [p1.id, child.id]) == ["queued", "cancelled"]
    links = await backend.task_links(child.id)
    assert links is not None and links.cancelled_by == p2.id
    record = (await backend.get_tasks([child.id]))[child.id]
    assert p2.id in (record.error or "") and p1.id not in (record.error or "")
    # Retrying the other failed parent now brings it back, waiting for both.
    await backend.retry([p2.id])
    assert await statuses(backend, [child.id]) == ["queued"]
    assert await waiting(backend, child.id) == 2
    await finish(backend, p1.id)
    await finish(backend, p2.id)
    assert await due(backend) == {child.id}


async def test_a_cascade_comes_back_level_by_level(backend: Backend) -> None:
    """A chain cancelled from its root, and a "run" task hanging off its middle:
    after the root's retry every step waits for the one before again."""
    ids = await chain(backend, 4)
    side = task(backend)
    await backend.enqueue_dependent([side], [Dependency(side.id, (ids[2],), "run")])
    await finish(backend, ids[0], "failed")
    assert await statuses(backend, ids) == ["failed"] + ["cancelled"] * 3
    assert await due(backend) == {side.id}  # its parent was cancelled: it may run
    await backend.retry([ids[0]])
    assert await statuses(backend, ids) == ["queued"] * 4
    assert [await waiting(backend, i) for i in ids[1:]] == [1, 1, 1]
    assert await waiting(backend, side.id) == 1
    for step in ids[:3]:
        assert await due(backend) == {step}
        await finish(backend, step)
    assert await due(backend) == {ids[3], side.id}


async def test_retrying_a_failed_task_without_links_is_unchanged(backend: Backend) -> None:
    plain = task(backend)
    await backend.enqueue([plain])
    await finish(backend, plain.id, "failed")
    assert await backend.retry() == [plain.id]
    assert await due(backend) == {plain.id}


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # SQLite: one writer at a time
async def test_a_retry_waits_for_a_parent_finish_in_flight(backend: Backend) -> None:
    """PostgreSQL: another parent's finish has settled the dependents (finding
    the dependent cancelled, so leaving it) but not committed when a retry brings
    the dependent back. The retry must count that finish, or the dependent would
    wait for a parent that already finished, forever."""
    import asyncpg

    p1, p2 = task(backend), task(backend)
    await backend.enqueue([p1, p2])
    child = task(backend)
    await backend.enqueue_dependent([child], [Dependency(child.id, (p1.id, p2.id))])
    await finish(backend, p1.id, "failed")
    claimed = await backend.claim("w", ["default"], 5, 30.0)
    assert [c.id for c in claimed] == [p2.id]  # running now
    conn = await asyncpg.connect(backend._dsn)  # type: ignore[attr-defined]
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(  # p2's finish, its transaction held open
            f'UPDATE "{backend.schema}".sitq_tasks '  # type: ignore[attr-defined]
            "SET status = 'succeeded', finished_at = $2 WHERE id = $1",
            p2.id,
            backend.now(),
        )
        retry = asyncio.ensure_future(backend.retry([p1.id]))
        deadline = asyncio.get_running_loop().time() + 10
        while not await conn.fetchval(  # the retry waits for p2's finish
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid <> pg_backend_pid()"
        ):
            assert asyncio.get_running_loop().time() < deadline, "the retry never waited"
            assert not retry.done(), "the retry did not wait for the finish in flight"
            await asyncio.sleep(0.01)
        await tx.commit()
        assert await asyncio.wait_for(retry, 10) == [p1.id]
    finally:
        await conn.close()
    assert await statuses(backend, [child.id]) == ["queued"]
    assert await waiting(backend, child.id) == 1
    await finish(backend, p1.id)
    assert await due(backend) == {child.id}


async def test_a_retried_dependent_whose_parents_were_all_purged_runs_at_once(
    backend: Backend,
) -> None:
    """Nothing is left to wait for: its count must not stay at the old one."""
    parent = task(backend)
    await backend.enqueue([parent])
    child = task(backend)
    await backend.enqueue_dependent([child], [Dependency(child.id, (parent.id,), "cancel")])
    assert await backend.cancel(child.id) == "cancelled"
    assert await backend.purge(["queued"]) == 1  # the parent, never run
    assert await backend.retry([child.id]) == [child.id]
    assert await waiting(backend, child.id) == 0
    assert await due(backend) == {child.id}


async def test_a_diamond_whose_ids_sort_children_first_comes_back_whole(
    backend: Backend,
) -> None:
    """H fails and cancels B, C (waits for B) and A (waits for B and C). A retry of
    H recounts B before C and C before A, whatever their ids' order: counted the
    other way, C saw B still cancelled and stayed cancelled, and A with it."""
    head = task(backend)
    await backend.enqueue([head])
    a, c, b = (task(backend, task_id) for task_id in task_ids_for(backend, 3))  # ids: A < C < B
    await backend.enqueue_dependent(
        [b, c, a],
        [
            Dependency(b.id, (head.id,), "cancel"),
            Dependency(c.id, (b.id,), "cancel"),
            Dependency(a.id, (b.id, c.id), "cancel"),
        ],
    )
    await finish(backend, head.id, "failed")
    assert await statuses(backend, [b.id, c.id, a.id]) == ["cancelled"] * 3
    assert await backend.retry([head.id]) == [head.id]
    assert await statuses(backend, [b.id, c.id, a.id]) == ["queued"] * 3
    assert [await waiting(backend, t.id) for t in (b, c, a)] == [1, 1, 2]
    await finish(backend, head.id)
    assert await due(backend) == {b.id}
