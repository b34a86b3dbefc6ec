"""The Huey baseline: SqliteHuey at the same `synchronous=NORMAL` as sitq.

Run by `huey_consumer huey_app.huey -k thread -w 8 ...` with HUEY_DB set.
"""

from __future__ import annotations

import os
from typing import Any

from huey import Huey
from huey.storage import SqliteStorage


class NormalSyncSqliteStorage(SqliteStorage):  # type: ignore[misc]
    """SqliteStorage with WAL and `synchronous=NORMAL` (Huey's fsync=False means OFF)."""

    def _create_connection(self) -> Any:
        conn = super()._create_connection()
        conn.execute("pragma synchronous=NORMAL")
        return conn


huey = Huey(
    "bench",
    storage_class=NormalSyncSqliteStorage,
    filename=os.environ.get("HUEY_DB", "huey.db"),
    results=True,
    store_none=True,  # store a result for every task, as sitq does
)


@huey.task()
def noop() -> None:
    """Does nothing."""
    return None
