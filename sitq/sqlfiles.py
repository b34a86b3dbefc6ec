"""Named SQL queries kept in ``.sql`` files, one file per dialect.

A file holds queries each headed by a ``-- name: <name>`` line; the text up to
the next header (comments and blank lines around it dropped) is the query::

    -- name: get_batch
    -- The batch's record.
    SELECT id, created_at, size FROM sitq_batches WHERE id = ?1

Layers (``sitq.batch``, ``sitq.workflow``) keep their SQL next to their code as
``sql/sqlite.sql`` and ``sql/postgres.sql`` and load it once at import with
:func:`load_dialects`; so can a backend for its own queries. Both files of a layer
must name the same queries, so a query missing from one dialect fails at import,
not at the first call.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Literal

#: The SQL dialects sitq's backends speak.
Dialect = Literal["sqlite", "postgres"]
DIALECTS: tuple[Dialect, ...] = ("sqlite", "postgres")

_HEADER = re.compile(r"^--\s*name:\s*([A-Za-z_][A-Za-z0-9_]*)\s*$", re.MULTILINE)


def parse(text: str, where: str = "<sql>") -> dict[str, str]:
    """The named queries of a ``.sql`` file's text, in file order. Text before the
    first header must be comments or blank; a name may appear only once."""
    queries: dict[str, str] = {}
    headers = list(_HEADER.finditer(text))
    if _code(text[: headers[0].start() if headers else len(text)]):
        raise ValueError(f"{where}: SQL before the first '-- name:' header")
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        name = header.group(1)
        if name in queries:
            raise ValueError(f"{where}: query {name!r} is named twice")
        body = _code(text[header.end() : following.start() if following else len(text)])
        if not body:
            raise ValueError(f"{where}: query {name!r} is empty")
        queries[name] = body
    return queries


def _code(text: str) -> str:
    """``text`` without its whole-line comments and surrounding blank lines."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return "\n".join(lines).strip()


def load(package: str, filename: str) -> dict[str, str]:
    """The named queries of ``filename``, a resource of ``package``."""
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    return parse(text, f"{package}/{filename}")


def load_dialects(package: str) -> dict[Dialect, dict[str, str]]:
    """Per dialect, the named queries of ``package``'s ``sql/<dialect>.sql``; every
    dialect must name the same queries."""
    found = {dialect: load(package, f"sql/{dialect}.sql") for dialect in DIALECTS}
    names = {dialect: set(queries) for dialect, queries in found.items()}
    first = names[DIALECTS[0]]
    for dialect in DIALECTS[1:]:
        if names[dialect] != first:
            missing = sorted(first ^ names[dialect])
            raise ValueError(f"{package}: the dialects' sql files differ in {missing}")
    return found
