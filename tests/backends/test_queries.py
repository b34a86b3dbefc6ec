"""The named query files: how they are read, and that the backends use them right."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sitq.backends.base import STATUS_SQL, Backend, StoreTransaction
from sitq.sqlfiles import QueryFileError, load_queries, migrations, parse_queries

BACKENDS = Path(__file__).resolve().parents[2] / "sitq" / "backends"


def test_a_query_is_its_text_without_the_comments_around_it() -> None:
    text = """-- the file's own comment

-- name: first
-- what it does (not sent)
SELECT 1
-- kept: inside the query
FROM t

-- the next section
-- name: second
SELECT 2
"""
    assert parse_queries(text, "x.sql") == {
        "first": "SELECT 1\n-- kept: inside the query\nFROM t",
        "second": "SELECT 2",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SELECT 1\n-- name: a\nSELECT 2\n", "SQL before the first"),
        ("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n", "named twice"),
        ("-- name: Bad-Name\nSELECT 1\n", "lowercase letter"),
        ("-- name: a\n-- only a comment\n\n-- name: b\nSELECT 1\n", "'a' has no SQL"),
    ],
)
def test_a_malformed_file_is_refused(text: str, message: str) -> None:
    with pytest.raises(QueryFileError, match=message):
        parse_queries(text, "x.sql")


def test_a_name_in_two_files_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "dialect_pkg"
    (package / "sql").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sql" / "a.sql").write_text("-- name: claim\nSELECT 1\n")
    (package / "sql" / "b.sql").write_text("-- name: claim\nSELECT 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(QueryFileError, match="'claim' is named in both"):
        load_queries("dialect_pkg")


def test_queries_are_read_only_and_name_a_missing_query() -> None:
    from sitq.backends.sqlite.schema import SQL

    assert SQL.claim_ready == SQL["claim_ready"]
    with pytest.raises(AttributeError, match="no query named 'clam_ready'"):
        _ = SQL.clam_ready
    with pytest.raises(AttributeError):
        SQL.claim_ready = "DELETE FROM sitq_tasks"


def test_migrations_must_cover_every_version() -> None:
    queries = {"v1_01_a": "A", "v1_02_b": "B", "v3_01_c": "C"}
    with pytest.raises(QueryFileError, match="expected 1 to 3"):
        migrations(queries, 3)
    assert migrations({"v1_02_b": "B", "v1_01_a": "A"}, 1) == {1: ("A", "B")}


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_every_query_a_backend_names_exists(dialect: str) -> None:
    """A misspelled query name fails here, not on the first call in production."""
    module = pytest.importorskip(f"sitq.backends.{dialect}.schema")
    sources = [*(BACKENDS / dialect).glob("*.py"), BACKENDS / "common.py"]  # SQLBackend's too
    used = {
        name
        for source in sources
        for name in re.findall(r"\bSQL\.([a-z_][a-z0-9_]*)", source.read_text())
    }
    assert used, "the backend names no query"
    assert used <= set(module.SQL), used - set(module.SQL)


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_spelled_out_status_matches_the_contract(dialect: str) -> None:
    """The .sql files write base.STATUS_SQL out in full: they must not drift from it."""
    module = pytest.importorskip(f"sitq.backends.{dialect}.schema")
    for name in ("count_statuses", "task_statuses", "list_window_tasks"):
        assert STATUS_SQL in module.SQL[name], name


async def test_only_the_schema_placeholder_is_filled_in(backend: Backend) -> None:
    """A JSON literal or a regex quantifier in a layer's SQL stays as written: only
    ``{s}`` (PostgreSQL's schema) is replaced, in statements and in transactions."""
    session = backend.store_session()
    if session.dialect == "postgres":
        sql = (
            """SELECT '{"a": {"b": 2}}'::jsonb #>> '{a,b}', 'aa' ~ '^a{2}$', """
            "(SELECT count(*) FROM {s}.sitq_tasks)"
        )
    else:
        sql = """SELECT json_extract('{"a": {"b": 2}}', '$.a.b'), 'aa' GLOB 'a*', 0"""

    async def read(tx: StoreTransaction) -> list[Sequence[Any]]:
        return await tx.fetch(sql)

    for rows in (await session.fetch(sql), await session.transaction(read)):
        assert [(str(a), bool(b), c) for a, b, c in rows] == [("2", True, 0)]
