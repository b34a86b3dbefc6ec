"""The SQLite group-commit writer: every waiting write gets an answer.

Each test waits on the writes with a deadline: a write left hanging fails it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sitq.backends.sqlite.enqueue import GroupCommit
from sitq.errors import NotConnected

DEADLINE = 10.0


def _table(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE t (v INTEGER)")


def _insert(conn: sqlite3.Connection, items: list[int]) -> None:
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in items])


def _stored(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return sorted(v for (v,) in conn.execute("SELECT v FROM t"))


async def _no_checkpoint(restart: bool) -> int:
    return 0


def _writer(
    path: Path,
    *,
    fast: bool,
    slow_path: Callable[[list[int]], Awaitable[None]],
    committed: Callable[[], None] = lambda: None,
) -> GroupCommit[int]:
    return GroupCommit(
        str(path),
        fast=fast,
        commit_fast=_insert,
        slow_path=slow_path,
        checkpoint=_no_checkpoint,
        weigh=lambda items: (len(items), 0),
        committed=committed,
        group_slow=True,
    )


async def _answers(*writes: Awaitable[Any]) -> list[Any]:
    """What each write ended with (a result or an exception), within the deadline."""
    return await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), timeout=DEADLINE)


async def test_a_cancelled_slow_path_answers_every_waiter(tmp_path: Path) -> None:
    _table(tmp_path / "db")
    entered = asyncio.Event()

    async def stuck(items: list[int]) -> None:
        entered.set()
        await asyncio.Event().wait()

    writer = _writer(tmp_path / "db", fast=False, slow_path=stuck)
    writes = [asyncio.ensure_future(writer.submit([i])) for i in range(3)]
    await asyncio.wait_for(entered.wait(), DEADLINE)
    for task in list(writer._background):  # the loop shutting down cancels it so
        task.cancel()
    answers = await _answers(*writes)
    assert all(isinstance(a, NotConnected) for a in answers), answers
    await writer.close()


async def test_a_failing_slow_path_answers_every_waiter_with_its_error(tmp_path: Path) -> None:
    _table(tmp_path / "db")

    async def fails(items: list[int]) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    writer = _writer(tmp_path / "db", fast=False, slow_path=fails)
    answers = await _answers(*(writer.submit([i]) for i in range(3)))
    assert all(isinstance(a, sqlite3.OperationalError) for a in answers), answers
    await writer.close()


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "slow"])
async def test_a_failing_commit_hook_still_releases_every_waiter(
    tmp_path: Path, fast: bool, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "db"
    _table(path)

    async def slow_path(items: list[int]) -> None:
        await asyncio.to_thread(lambda: _commit_on_own_connection(path, items))

    def hook() -> None:
        raise RuntimeError("the wake-up failed")

    writer = _writer(path, fast=fast, slow_path=slow_path, committed=hook)
    with caplog.at_level(logging.ERROR, logger="sitq.backends.sqlite"):
        answers = await _answers(*(writer.submit([i]) for i in range(3)))
        assert answers == [None, None, None]  # stored: that is their answer
        # the direct path (more items than a group takes) answers the same way
        assert await _answers(writer.submit(list(range(10, 400)))) == [None]
    await writer.close()
    assert _stored(path) == [0, 1, 2, *range(10, 400)]
    assert "the wake-up failed" in caplog.text


def _commit_on_own_connection(path: Path, items: list[int]) -> None:
    with sqlite3.connect(path) as conn:
        _insert(conn, items)
