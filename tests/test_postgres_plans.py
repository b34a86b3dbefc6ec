"""The PostgreSQL worker path's plans: how much each claim and finish reads.

A drain's speed on PostgreSQL is set by what each claim and finish statement
touches, and the planner picks that from statistics a young table lacks. These
tests run the statements as a worker does (a prepared statement, planned
generically after its first executions) under EXPLAIN ANALYZE, and bound the rows
every plan node handles by the batch's size rather than by the table's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import jobs
import pytest
from support import POSTGRES_URL, drop_postgres_schema, postgres_available, postgres_url

from sitq import TaskQueue
from sitq.backends.base import Outcome
from sitq.backends.postgres import PostgresBackend
from sitq.backends.postgres.schema import SQL


@pytest.fixture
async def schema(tmp_path: Path) -> AsyncIterator[str]:
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    name = f"p_{abs(hash(str(tmp_path))):x}"[:30]
    await drop_postgres_schema(name)
    yield name
    await drop_postgres_schema(name)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


async def _work(schema: str, sql: str, *params: Any) -> tuple[int, str]:
    """The most rows any node of ``sql``'s generic plan handled (rows times loops),
    run and rolled back; and the plan, for the failure message."""
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        async with conn.transaction():
            text = sql.replace("{s}", f'"{schema}"')
            (raw,) = await conn.fetchrow(f"EXPLAIN (ANALYZE, FORMAT JSON) {text}", *params)
            plan = json.loads(raw)[0]["Plan"]
            work = max(node["Actual Rows"] * node["Actual Loops"] for node in _nodes(plan))
            raise _RolledBack(work, json.dumps(plan, indent=1))
    except _RolledBack as done:
        return done.work, done.plan
    finally:
        await conn.close()


class _RolledBack(Exception):
    def __init__(self, work: int, plan: str) -> None:
        super().__init__()
        self.work, self.plan = work, plan


async def test_a_claim_over_several_queues_reads_only_their_heads(schema: str) -> None:
    # With `queue = ANY(...)` the claim read and sorted every ready task of the
    # queues (PostgreSQL before 17), 600 here, to take 5.
    async with TaskQueue(postgres_url(schema)) as queue:
        for name in ("a", "b"):
            await queue.with_options(queue=name).enqueue_many(jobs.add, [(1, 2)] * 300)
    backend = PostgresBackend(postgres_url(schema))
    await backend.connect()
    try:
        now = backend.now()
        work, plan = await _work(schema, SQL.claim_ready, "w", now, now + 30, ["a", "b", "c"], 5)
        assert work <= 3 * 5, plan
        claimed = await backend.claim("w", ["b", "a"], 5, 30)
        assert len(claimed) == 5
        assert {task.queue for task in claimed} <= {"a", "b"}
    finally:
        await backend.close()


async def test_finish_start_marks_and_renewals_read_only_their_batch_after_a_drain(
    schema: str,
) -> None:
    # Every task a drain finished leaves a dead entry in the running index until
    # vacuum: a finish (a start mark, a lease renewal) that let the planner find its rows through
    # that index read
    # all of them (600 here), and one that joined its outcomes to the locked rows
    # rescanned the outcome arrays once per row (batch squared).
    async with TaskQueue(postgres_url(schema)) as queue:
        await queue.enqueue_many(jobs.add, [(1, 2)] * 5000)
    backend = PostgresBackend(postgres_url(schema))
    await backend.connect()
    try:
        for _ in range(30):
            claimed = await backend.claim("w", ["default"], 20, 30)
            await backend.finish(
                [(task.lease, Outcome("succeeded", result=b"N.")) for task in claimed]
            )
        claimed = await backend.claim("w", ["default"], 20, 30)
        assert len(claimed) == 20
        leases = [task.lease for task in claimed]
        none: list[Any] = [None] * len(leases)
        work, plan = await _work(
            schema,
            SQL.finish,
            backend.now(),
            86400.0,
            [lease.task_id for lease in leases],
            [lease.worker_id for lease in leases],
            [lease.attempt for lease in leases],
            ["succeeded"] * len(leases),
            [b"N."] * len(leases),
            none,
            none,
            none,
            ["results"],
            "sitq_plans",
            none,
        )
        assert work <= 3 * len(leases), plan
        work, plan = await _work(
            schema,
            SQL.mark_started,
            [lease.task_id for lease in leases],
            [lease.worker_id for lease in leases],
            [lease.attempt for lease in leases],
            [backend.now()] * len(leases),
        )
        assert work <= 3 * len(leases), plan
        work, plan = await _work(
            schema,
            SQL.renew_leases,
            backend.now() + 30,
            "w",
            [lease.task_id for lease in leases],
        )
        assert work <= 3 * len(leases), plan
        applied = await backend.finish(
            [(lease, Outcome("succeeded", result=b"N.")) for lease in leases]
        )
        assert applied == [True] * len(leases)
    finally:
        await backend.close()


async def test_a_pool_connection_goes_back_without_a_reset_round_trip(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncpg's default reset sends a query (unlock, CLOSE ALL, UNLISTEN, RESET ALL)
    # each time a connection returns to the pool: one more round trip per claim and
    # per finish, for session state sitq never leaves behind.
    sent: list[str] = []
    execute = asyncpg.connection.Connection.execute

    async def spy(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(query)
        return await execute(self, query, *args, **kwargs)

    async with TaskQueue(postgres_url(schema)) as queue:
        await queue.enqueue_many(jobs.add, [(1, 2)] * 3)
    backend = PostgresBackend(postgres_url(schema))
    await backend.connect()
    try:
        monkeypatch.setattr(asyncpg.connection.Connection, "execute", spy)
        claimed = await backend.claim("w", ["default"], 3, 30)
        await backend.finish([(task.lease, Outcome("succeeded", result=b"N.")) for task in claimed])
        assert len(claimed) == 3
        assert not [query for query in sent if "RESET ALL" in query or "UNLISTEN" in query]
    finally:
        await backend.close()
