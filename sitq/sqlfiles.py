"""Named SQL queries kept in ``.sql`` files: the one loader of sitq's SQL.

A file holds queries each headed by a ``-- name: <name>`` line; comment lines
right after the header document the query and are not sent, comments inside it
stay in it::

    -- name: get_batch
    -- The batch's record.
    SELECT id, created_at, size FROM sitq_batches WHERE id = ?1

A backend keeps its SQL in ``sql/<concern>.sql`` files and loads the directory
once at import with :func:`load_queries` (call sites read ``SQL.claim_ready``).
A layer that owns a store (``sitq.batch``, ``sitq.workflow``) keeps one file per
dialect, ``sql/sqlite.sql`` and ``sql/postgres.sql``, loaded with
:func:`load_dialects`, which fails at import if the two name different queries.
A malformed file fails at import too, never at the first call.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from importlib import resources
from typing import Literal

_HEADER = re.compile(r"^--\s*name:")
_NAME = re.compile(r"^--\s*name:\s*([a-z][a-z0-9_]*)\s*$")


class QueryFileError(ValueError):
    """A ``.sql`` file that cannot be read as named queries."""


class Queries(Mapping[str, str]):
    """Named queries of one dialect: ``queries.claim_ready`` or ``queries["claim_ready"]``.

    Read-only; an unknown name raises ``AttributeError`` (or ``KeyError``) naming
    where the queries were read from.
    """

    _origin: str
    _queries: dict[str, str]

    def __init__(self, queries: Mapping[str, str], origin: str) -> None:
        taken = [name for name in queries if hasattr(type(self), name)]
        if taken:
            raise QueryFileError(f"query names {taken} in {origin} are taken by Queries itself")
        object.__setattr__(self, "_queries", dict(queries))
        object.__setattr__(self, "_origin", origin)
        # Each query also as an instance attribute: `SQL.finish` on the hot path is
        # a plain attribute read, not a call of __getattr__.
        self.__dict__.update(queries)

    def __getattr__(self, name: str) -> str:
        # Only called for a name that is no attribute: no such query.
        raise AttributeError(f"no query named {name!r} in {self._origin}")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("named queries are read-only")

    def __getitem__(self, name: str) -> str:
        return self._queries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._queries)

    def __len__(self) -> int:
        return len(self._queries)

    def __repr__(self) -> str:
        return f"<Queries {len(self)} from {self._origin}>"


def _is_filler(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("--")


def parse_queries(text: str, source: str) -> dict[str, str]:
    """The named queries in ``text`` (the contents of ``source``, named in errors)."""
    queries: dict[str, str] = {}
    name: str | None = None
    body: list[str] = []

    def close(line_number: int) -> None:
        if name is None:
            return
        while body and _is_filler(body[0]):
            body.pop(0)
        while body and _is_filler(body[-1]):
            body.pop()
        if not body:
            raise QueryFileError(f"{source}:{line_number}: query {name!r} has no SQL")
        queries[name] = "\n".join(line.rstrip() for line in body)

    for number, line in enumerate(text.splitlines(), start=1):
        if _HEADER.match(line):
            close(number)
            match = _NAME.match(line)
            if match is None:
                raise QueryFileError(
                    f"{source}:{number}: a query name is a lowercase letter, then lowercase "
                    f"letters, digits and _ (got {line.strip()!r})"
                )
            name, body = match.group(1), []
            if name in queries:
                raise QueryFileError(f"{source}:{number}: query {name!r} is named twice")
        elif name is None:
            if not _is_filler(line):
                raise QueryFileError(f"{source}:{number}: SQL before the first '-- name:' header")
        else:
            body.append(line)
    close(len(text.splitlines()))
    return queries


def load_queries(package: str, directory: str = "sql") -> Queries:
    """Every query of the ``.sql`` files in ``package``'s ``directory``, by name.

    A name may appear in one file only: the files of one directory share a namespace.
    """
    folder = resources.files(package).joinpath(directory)
    queries: dict[str, str] = {}
    where: dict[str, str] = {}
    files = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".sql")),
        key=lambda entry: entry.name,
    )
    if not files:
        raise QueryFileError(f"no .sql files in {package}/{directory}")
    for entry in files:
        source = f"{package.replace('.', '/')}/{directory}/{entry.name}"
        for name, sql in parse_queries(entry.read_text(encoding="utf-8"), source).items():
            if name in queries:
                raise QueryFileError(f"query {name!r} is named in both {where[name]} and {source}")
            queries[name] = sql
            where[name] = source
    return Queries(queries, f"{package.replace('.', '/')}/{directory}")


_MIGRATION = re.compile(r"^v([0-9]+)_([0-9]+)_")


def migrations(queries: Mapping[str, str], version: int) -> dict[int, tuple[str, ...]]:
    """The schema migrations among ``queries``: ``{N: statements}`` for 1..``version``.

    Statement ``vN_MM_label`` is the MM-th statement of the upgrade to version N.
    A version missing, or one past ``version``, fails at import: a released
    schema must be reproducible statement by statement.
    """
    steps: dict[int, list[tuple[int, str]]] = {}
    for name, sql in queries.items():
        match = _MIGRATION.match(name)
        if match:
            steps.setdefault(int(match.group(1)), []).append((int(match.group(2)), sql))
    for target, statements in steps.items():
        numbers = [number for number, _ in statements]
        if len(set(numbers)) != len(numbers):
            raise QueryFileError(f"migration {target} numbers two statements alike: {numbers}")
    if sorted(steps) != list(range(1, version + 1)):
        raise QueryFileError(
            f"migrations are for versions {sorted(steps)}, expected 1 to {version}"
        )
    return {
        target: tuple(sql for _, sql in sorted(statements))
        for target, statements in sorted(steps.items())
    }


#: The SQL dialects sitq's backends speak.
Dialect = Literal["sqlite", "postgres"]
DIALECTS: tuple[Dialect, ...] = ("sqlite", "postgres")


def load_dialects(package: str) -> dict[Dialect, dict[str, str]]:
    """Per dialect, the named queries of ``package``'s ``sql/<dialect>.sql``; every
    dialect must name the same queries."""
    folder = resources.files(package).joinpath("sql")
    found: dict[Dialect, dict[str, str]] = {}
    for dialect in DIALECTS:
        source = f"{package.replace('.', '/')}/sql/{dialect}.sql"
        text = folder.joinpath(f"{dialect}.sql").read_text(encoding="utf-8")
        found[dialect] = parse_queries(text, source)
    first = set(found[DIALECTS[0]])
    for dialect in DIALECTS[1:]:
        if set(found[dialect]) != first:
            missing = sorted(first ^ set(found[dialect]))
            raise QueryFileError(f"{package}: the dialects' sql files differ in {missing}")
    return found
