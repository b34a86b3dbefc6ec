"""Conformance: dependencies kept by the database, on every backend.

A dependent stays queued (not due) until the transaction that finishes its last
parent makes it due; a failed or cancelled parent cancels its "cancel"
dependents transitively in that same transaction; a retry of the parent brings
them back. Real backends, real transactions; the worker is played by claim/finish.
"""

from __future__ import annotations

import time

import pytest
from support import task_ids_for, until_listening

from sitq.backends.base import Backend, Dependency, NewTask, Outcome
from sitq.errors import InvalidDependency


def task(backend: Backend, task_id: str | None = None, delay: float = 0.0) -> NewTask:
    now = backend.now()
    return NewTask(
        task_id or task_ids_for(backend)[0],
        "default",
        "tests.job",
        b"p",
        0,
        now,
        now + delay,
        0,
        1.0,
        None,
        None,
        None,
    )


async def run_one(backend: Backend, status: str = "succeeded", result: bytes = b"r") -> str:
    """Claim the one due task and end it with ``status``; its id."""
    (claimed,) = await backend.claim("w", ["default"], 1, 30.0)
    outcome = Outcome(status, result=result if status == "succeeded" else None, error="boom")
    assert await backend.finish([(claimed.lease, outcome)]) == [True]
    return claimed.id


async def statuses(backend: Backend, ids: list[str]) -> list[str]:
    found = await backend.task_statuses(ids)
    return [found[i] for i in ids]


async def chain(backend: Backend, n: int, mode: str = "cancel") -> list[str]:
    """n tasks, each waiting for the one before, stored in one call."""
    tasks = [task(backend) for _ in range(n)]
    deps = [Dependency(tasks[i].id, (tasks[i - 1].id,), mode) for i in range(1, n)]
    await backend.enqueue_dependent(tasks, deps)
    return [t.id for t in tasks]


async def test_a_chain_runs_in_order_each_step_due_when_its_parent_finishes(
    backend: Backend,
) -> None:
    ids = await chain(backend, 3)
    links = await backend.task_links(ids[1])
    assert links is not None and links.parents == [ids[0]] and links.waiting == 1
    assert links.children == [ids[2]] and links.on_parent_failure == "cancel"
    assert await statuses(backend, ids) == ["queued"] * 3
    # Only the first is due: the others are not claimed however often one asks.
    assert await run_one(backend) == ids[0]
    assert await backend.claim("w", ["default"], 5, 30.0) != []  # step 2 is due now
    links = await backend.task_links(ids[1])
    assert links is not None and links.waiting == 0


async def test_a_fan_in_becomes_due_only_after_its_last_parent(backend: Backend) -> None:
    parents = [task(backend) for _ in range(3)]
    await backend.enqueue(parents)
    child = task(backend)
    await backend.enqueue_dependent([child], [Dependency(child.id, tuple(p.id for p in parents))])
    for left in (2, 1):
        await run_one(backend)
        links = await backend.task_links(child.id)
        assert links is not None and links.waiting == left
    await run_one(backend)
    (claimed,) = await backend.claim("w", ["default"], 5, 30.0)
    assert claimed.id == child.id


async def test_a_failed_parent_cancels_dependents_transitively_naming_it(
    backend: Backend,
) -> None:
    ids = await chain(backend, 5)
    await run_one(backend)
    await run_one(backend)
    failed = await run_one(backend, "failed")
    assert failed == ids[2]
    assert await statuses(backend, ids) == ["succeeded", "succeeded", "failed"] + ["cancelled"] * 2
    records = await backend.get_tasks(ids[3:])
    for i in ids[3:]:
        assert ids[2] in (records[i].error or "") and "ParentFailed" in (records[i].error or "")
        links = await backend.task_links(i)
        assert links is not None and links.cancelled_by == ids[2]
    assert await backend.claim("w", ["default"], 5, 30.0) == []


async def test_run_mode_dependents_run_after_a_failed_parent(backend: Backend) -> None:
    ids = await chain(backend, 3, mode="run")
    await run_one(backend, "failed")
    await run_one(backend, "failed")
    await run_one(backend)
    assert await statuses(backend, ids) == ["failed", "failed", "succeeded"]


async def test_retrying_the_failed_parent_brings_its_dependents_back(backend: Backend) -> None:
    ids = await chain(backend, 4)
    await run_one(backend)
    await run_one(backend, "failed")
    assert (await statuses(backend, ids))[2:] == ["cancelled", "cancelled"]
    assert await backend.retry([ids[1]]) == [ids[1]]
    assert await statuses(backend, ids) == ["succeeded", "queued", "queued", "queued"]
    links = await backend.task_links(ids[3])
    assert links is not None and links.waiting == 1 and links.cancelled_by is None
    for expected in ids[1:]:
        assert await run_one(backend) == expected
    assert await statuses(backend, ids) == ["succeeded"] * 4


async def test_a_user_cancelled_dependent_stays_cancelled_on_a_parent_retry(
    backend: Backend,
) -> None:
    ids = await chain(backend, 3)
    assert await backend.cancel(ids[2]) == "cancelled"
    await run_one(backend, "failed")  # cancels ids[1] because of ids[0]
    await backend.retry([ids[0]])
    assert await statuses(backend, ids) == ["queued", "queued", "cancelled"]


async def test_cancelling_a_waiting_parent_cancels_its_dependents(backend: Backend) -> None:
    ids = await chain(backend, 3)
    assert await backend.cancel(ids[0]) == "cancelled"
    assert await statuses(backend, ids) == ["cancelled"] * 3


async def test_a_dependent_of_a_finished_parent_is_due_or_born_cancelled(
    backend: Backend,
) -> None:
    parents = [task(backend), task(backend)]
    await backend.enqueue(parents)
    await run_one(backend)
    await run_one(backend, "failed")
    ok, doomed, runs = task(backend), task(backend), task(backend)
    await backend.enqueue_dependent(
        [ok, doomed, runs],
        [
            Dependency(ok.id, (parents[0].id,)),
            Dependency(doomed.id, (parents[1].id,)),
            Dependency(runs.id, (parents[1].id,), "run"),
        ],
    )
    assert await statuses(backend, [ok.id, doomed.id, runs.id]) == [
        "queued",
        "cancelled",
        "queued",
    ]
    claimed = await backend.claim("w", ["default"], 5, 30.0)
    assert {c.id for c in claimed} == {ok.id, runs.id}


async def test_an_unknown_parent_is_refused_and_nothing_stored(backend: Backend) -> None:
    child = task(backend)
    with pytest.raises(InvalidDependency, match="unknown parent"):
        await backend.enqueue_dependent([child], [Dependency(child.id, ("nope",))])
    assert await backend.get_tasks([child.id]) == {}


async def test_a_parent_cancelled_while_held_settles_dependents_at_release(
    backend: Backend,
) -> None:
    ids = await chain(backend, 2)
    (claimed,) = await backend.claim("w", ["default"], 1, 30.0)
    assert await backend.cancel(ids[0]) == "requested"
    assert await backend.release([claimed.lease]) == 1
    assert await statuses(backend, ids) == ["cancelled", "cancelled"]


async def test_a_delayed_dependent_keeps_its_own_time(backend: Backend) -> None:
    parent = task(backend)
    child = task(backend, delay=3600.0)
    await backend.enqueue_dependent([parent, child], [Dependency(child.id, (parent.id,))])
    await run_one(backend)
    assert await backend.claim("w", ["default"], 5, 30.0) == []
    record = (await backend.get_tasks([child.id]))[child.id]
    assert record.available_at == pytest.approx(child.available_at)


async def test_purging_a_dependent_removes_its_links(backend: Backend) -> None:
    ids = await chain(backend, 2)
    await backend.cancel(ids[0])
    assert await backend.purge(["cancelled"]) == 2
    assert await backend.task_links(ids[1]) is None


async def test_self_dependency_and_cycles_are_refused_and_nothing_stored(
    backend: Backend,
) -> None:
    a, b = task(backend), task(backend)
    with pytest.raises(InvalidDependency, match="itself"):
        await backend.enqueue_dependent([a], [Dependency(a.id, (a.id,))])
    with pytest.raises(InvalidDependency, match="cycle"):
        await backend.enqueue_dependent(
            [a, b], [Dependency(a.id, (b.id,)), Dependency(b.id, (a.id,))]
        )
    assert await backend.get_tasks([a.id, b.id]) == {}


@pytest.mark.parametrize("start_rides", [True, False])
async def test_the_finish_that_makes_a_dependent_due_wakes_the_workers(
    backend: Backend, start_rides: bool
) -> None:
    """The next step of a chain is found at once, not at an idle worker's next
    poll: the finish of its parent wakes the "tasks" waiters, whether the parent's
    start mark rides in its finish row or was written before."""
    ids = await chain(backend, 2)
    (claimed,) = await backend.claim("w", ["default"], 1, 30.0)
    if not start_rides:
        await backend.finish([], [(claimed.lease, backend.now())])
    await until_listening(backend)
    started = [(claimed.lease, backend.now())] if start_rides else []
    assert await backend.finish([(claimed.lease, Outcome("succeeded", result=b"r"))], started)
    woken = time.monotonic()
    await backend.wait_for_change("tasks", 10.0)
    assert time.monotonic() - woken < 5.0, "no wake-up: the dependent waits for a poll"
    assert [c.id for c in await backend.claim("w", ["default"], 5, 30.0)] == [ids[1]]
