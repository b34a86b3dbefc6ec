"""Conformance: what purge and expiry do to a dependency graph, on every backend.

A parent purged before it finished settles its dependents in the purge's own
transaction, as a parent that ended without a result ("cancel" dependents end
cancelled naming it, "run" ones count it as done); expiry keeps a finished
parent until its dependents have finished, so they still receive its result;
and a parent whose row is gone anyway shows up, in its place, as missing.
"""

from __future__ import annotations

from test_dependencies import run_one, task

from sitq.backends.base import Backend, Dependency, NewTask, Outcome


def in_queue(backend: Backend, queue: str, result_ttl: float | None = None) -> NewTask:
    return task(backend)._replace(queue=queue, result_ttl=result_ttl)


async def test_expiry_keeps_a_parent_until_its_dependents_have_finished(
    backend: Backend,
) -> None:
    early = in_queue(backend, "default", result_ttl=0.0)
    late = in_queue(backend, "late")
    child = task(backend)
    await backend.enqueue_dependent(
        [early, late, child], [Dependency(child.id, (early.id, late.id))]
    )
    assert await run_one(backend, result=b"early") == early.id
    assert await backend.prune() == 0  # expired, but its dependent has not run
    (claimed,) = await backend.claim("w", ["late"], 1, 30.0)
    assert await backend.finish([(claimed.lease, Outcome("succeeded", result=b"late"))])
    links = await backend.task_links(child.id, with_results=True)
    assert links is not None and links.results is not None
    assert [(r.id, r.result) for r in links.results] == [(early.id, b"early"), (late.id, b"late")]
    assert await run_one(backend) == child.id
    assert await backend.prune() == 1  # its dependents are done: it goes now
    assert await backend.get_tasks([early.id]) == {}
