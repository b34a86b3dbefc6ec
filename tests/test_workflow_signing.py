"""Signed workflow state: with a secret key, a run's params, a step's items and
result, and an item's result are signed bound to where they are stored, so a
value copied into another run, step or item is refused unread."""

from __future__ import annotations

import contextlib
import pathlib
import re
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from support import POSTGRES_URL
from workflow_support import run_cli, run_id_of, workflow_env

from sitq import TaskQueue
from sitq.errors import PayloadRejected, SitqError
from sitq.serialization import SignedSerializer
from sitq.workflow.kinds import ItemOutcome
from sitq.workflow.state import StateStore

KEY = "k" * 32


class TouchesAFile:
    """Unpickling this creates a file: proof that a value was deserialized."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


async def _record(store: StateStore, run_id: str, value: Any) -> None:
    """A run whose params, items, item results and step result are all ``value``."""
    await store.create_run(run_id, "wf.yaml", None, "steps: []", {"v": value})
    for step in ("a", "b"):
        await store.begin_step(run_id, step, 0, [value, value], True)
        for index in (0, 1):
            outcome = ItemOutcome(ok=True, value=value, attempts=1)
            await store.item_finished(run_id, step, index, outcome)
        await store.finish_step(run_id, step, "succeeded", value)


COPIES = [
    # (what is read, the UPDATE that copies a value signed for another place)
    (
        "params",
        "UPDATE sitq_workflow_runs SET params = "
        "(SELECT params FROM sitq_workflow_runs WHERE id = 'evil') WHERE id = 'good'",
    ),
    (
        "items",
        "UPDATE sitq_workflow_steps SET items = (SELECT items FROM sitq_workflow_steps "
        "WHERE run_id = 'evil' AND name = 'a') WHERE run_id = 'good' AND name = 'a'",
    ),
    (
        "step-result",
        "UPDATE sitq_workflow_steps SET result = (SELECT result FROM sitq_workflow_steps "
        "WHERE run_id = 'evil' AND name = 'a') WHERE run_id = 'good' AND name = 'a'",
    ),
    (
        "item-result",
        "UPDATE sitq_workflow_items SET result = (SELECT result FROM sitq_workflow_items "
        "WHERE run_id = 'evil' AND step = 'a' AND idx = 0) "
        "WHERE run_id = 'good' AND step = 'a' AND idx = 0",
    ),
    # Within one run: from another step, and from another item of the same step.
    (
        "items",
        "UPDATE sitq_workflow_steps SET items = (SELECT items FROM sitq_workflow_steps "
        "WHERE run_id = 'good' AND name = 'b') WHERE run_id = 'good' AND name = 'a'",
    ),
    (
        "item-result",
        "UPDATE sitq_workflow_items SET result = (SELECT result FROM sitq_workflow_items "
        "WHERE run_id = 'good' AND step = 'a' AND idx = 1) "
        "WHERE run_id = 'good' AND step = 'a' AND idx = 0",
    ),
]


async def _copy(db: str, statement: str) -> None:
    """Run one UPDATE on the database directly, as someone with write access would:
    sqlite3 on the file, asyncpg on PostgreSQL; it must change one row."""
    if "://" not in db:
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            assert conn.execute(statement).rowcount == 1
        return
    import asyncpg

    schema = parse_qs(urlsplit(db).query)["sitq_schema"][0]
    statement = re.sub(r"\bsitq_workflow_\w+", lambda m: f'"{schema}".{m.group()}', statement)
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        assert await conn.execute(statement) == "UPDATE 1"
    finally:
        await conn.close()


async def _read(store: StateStore, what: str) -> Any:
    if what == "params":
        return store.params_of(await store.run("good"))
    if what == "items":
        return await store.step_items("good", "a")
    if what == "step-result":
        return await store.step_result("good", "a")
    return await store.item_values("good", "a")


@pytest.mark.parametrize(("what", "copy"), COPIES)
async def test_a_signed_value_copied_to_another_run_step_or_item_is_refused_unread(
    tmp_path: Path, db_url: str, what: str, copy: str
) -> None:
    db = db_url
    marker = tmp_path / "unpickled"
    async with TaskQueue(db, serializer=SignedSerializer(KEY)) as queue:
        store = StateStore(queue)
        await _record(store, "good", 7)
        assert (await _read(store, what)) in ({"v": 7}, [7, 7], 7, {0: 7, 1: 7})
        await _record(store, "evil", TouchesAFile(marker))
        if what == "items" and "'b'" in copy:
            # Same run, another step: make step b's items a marker too.
            await store.reset_step("good", "b")
            await store.begin_step("good", "b", 1, [TouchesAFile(marker)], True)
        if what == "item-result" and "idx = 1" in copy:
            outcome = ItemOutcome(ok=True, value=TouchesAFile(marker), attempts=1)
            await store.item_finished("good", "a", 1, outcome)

        await _copy(db, copy)
        with pytest.raises(
            SitqError, match=r"refused .* of run good: its signature does not match"
        ):
            await _read(store, what)
    assert not marker.exists()


async def test_workflow_values_signed_before_they_were_bound_need_the_transition_setting(
    tmp_path: Path,
) -> None:
    db = tmp_path / "sitq.db"
    signed = SignedSerializer(KEY)
    async with TaskQueue(db, serializer=signed) as queue:
        await _record(StateStore(queue), "old", 1)
    with sqlite3.connect(db) as conn:  # as sitq wrote them before: signed, bound to nothing
        conn.execute("UPDATE sitq_workflow_runs SET params = ?", (signed.dumps({"v": 2}),))
    conn.close()

    async with TaskQueue(db, serializer=SignedSerializer(KEY)) as queue:
        store = StateStore(queue)
        with pytest.raises(PayloadRejected, match="SITQ_ACCEPT_UNBOUND_SIGNATURES=1"):
            store.params_of(await store.run("old"))
    accepting = SignedSerializer(KEY, accept_unbound=True)
    async with TaskQueue(db, serializer=accepting) as queue:
        store = StateStore(queue)
        assert store.params_of(await store.run("old")) == {"v": 2}
        assert await store.item_values("old", "a") == {0: 1, 1: 1}  # bound ones still load


FAILS_WHILE_FLAGGED = """
params:
  flag: ""
steps:
  - name: each
    for_each: [1, 2]
    type: python
    code: |
      return item * 10
  - name: last
    type: python
    code: |
      import os
      if os.path.exists(params['flag']):
          raise ValueError("flagged")
      return 1
"""


def test_a_resume_of_a_run_whose_values_were_copied_is_refused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "wf.yaml").write_text(FAILS_WHILE_FLAGGED)
    flag = tmp_path / "flag"
    flag.write_text("")
    env = workflow_env(tmp_path, SITQ_SECRET_KEY=KEY)
    runs = []
    for _ in range(2):
        proc = run_cli("run", "wf.yaml", "--param", f"flag={flag}", cwd=work, env=env)
        assert proc.returncode != 0, proc.stdout + proc.stderr
        runs.append(run_id_of(proc.stdout + proc.stderr))
    first, second = runs
    with sqlite3.connect(tmp_path / "sitq.db") as conn:
        conn.execute(
            "UPDATE sitq_workflow_items SET result = (SELECT result FROM sitq_workflow_items "
            "WHERE run_id = ? AND step = 'each' AND idx = 0) "
            "WHERE run_id = ? AND step = 'each' AND idx = 0",
            (first, second),
        )
    conn.close()
    flag.unlink()
    proc = run_cli("run", "wf.yaml", "--resume", second, cwd=work, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert f"refused the result of item 0 of step 'each' of run {second}" in output
    assert "Traceback" not in output
