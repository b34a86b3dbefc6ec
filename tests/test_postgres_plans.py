"""The PostgreSQL worker path's plans: how much each claim and finish reads.

A drain's speed on PostgreSQL is set by what each claim and finish statement
touches, and the planner picks that from statistics a young table lacks. These
tests run the statements as a worker does (a prepared statement, planned
generically after its first executions) under EXPLAIN ANALYZE, and bound the rows
every plan node handles by the batch's size rather than by the table's.
"""

from __future__ import annotations

import json
import time
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


async def _work(schema: str, sql: str, *params: Any, plan: str = "generic") -> tuple[int, str]:
    """The most rows any node of ``sql``'s plan handled (rows times loops), run and
    rolled back; and the plan, for the failure message. ``plan``: "generic" (what
    a prepared statement settles on) or "custom" (its first runs, planned for the
    values given)."""
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f"SET plan_cache_mode = force_{plan}_plan")
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
    # vacuum: a finish (a start mark, a lease renewal) that let the planner find its
    # rows through that index read all of them (600 here); one that joined its
    # outcomes to the locked rows afterwards rescanned the outcome arrays once per
    # row (batch squared); and one planned as a join read and hashed the whole
    # table (5,000 rows here) for a large batch.
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
        for size, plan in ((20, "generic"), (300, "custom")):
            claimed = await backend.claim("w", ["default"], size, 30)
            assert len(claimed) == size
            leases = [task.lease for task in claimed]
            ids = [lease.task_id for lease in leases]
            holders = [lease.worker_id for lease in leases]
            attempts = [lease.attempt for lease in leases]
            none: list[Any] = [None] * size
            outcome = (["succeeded"] * size, [b"N."] * size, none, none, none)
            for sql, params in (
                (
                    SQL.finish,
                    (
                        backend.now(),
                        86400.0,
                        ids,
                        holders,
                        attempts,
                        *outcome,
                        ["results"],
                        "sitq_plans",
                        none,
                    ),
                ),
                (SQL.mark_started, (ids, holders, attempts, [backend.now()] * size)),
                (SQL.renew_leases, (backend.now() + 30, "w", ids)),
            ):
                work, shown = await _work(schema, sql, *params, plan=plan)
                assert work <= 3 * size, shown
            applied = await backend.finish(
                [(lease, Outcome("succeeded", result=b"N.")) for lease in leases]
            )
            assert applied == [True] * size
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


@pytest.mark.parametrize("name", ["claim_ready", "claim_ready_one_queue"])
async def test_a_claim_commits_without_waiting_for_its_flush(schema: str, name: str) -> None:
    """The claim turns synchronous_commit off for its own transaction only: its
    WAL flush took most of its time, and a claim lost in a server crash only runs
    its tasks again (the finish, which flushes, stays durable)."""
    async with TaskQueue(postgres_url(schema)) as queue:
        await queue.enqueue_many(jobs.add, [(1, 2)] * 3)
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        now = time.time()
        sql = getattr(SQL, name).replace("{s}", f'"{schema}"')
        async with conn.transaction():
            rows = await conn.fetch(sql, "w", now, now + 30, ["default"], 2)
            assert len(rows) == 2
            assert await conn.fetchval("SHOW synchronous_commit") == "off"
        assert await conn.fetchval("SHOW synchronous_commit") == "on"  # the session's own
    finally:
        await conn.close()
