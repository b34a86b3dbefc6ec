"""The raw ceiling: stdlib sqlite3 doing only the bare queue cycle.

`python raw_ceiling.py fill DB N` stores N no-op task rows; `python
raw_ceiling.py drain DB` claims them in batches of 100 and marks them done
(WAL, synchronous=NORMAL), and prints the seconds it took. No serialization,
no task code, no leases: the most a SQLite queue in Python could do.
"""

from __future__ import annotations

import sqlite3
import sys
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS task (
    id INTEGER PRIMARY KEY, status INTEGER NOT NULL DEFAULT 0, payload BLOB, result BLOB
);
CREATE INDEX IF NOT EXISTS task_ready ON task (id) WHERE status = 0;
"""


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


def fill(path: str, count: int) -> None:
    conn = connect(path)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO task (payload) VALUES (?)", ((b"x" * 64,) for _ in range(count)))
    conn.execute("COMMIT")


def drain(path: str) -> float:
    conn = connect(path)
    started = time.perf_counter()
    while True:
        rows = conn.execute(
            "UPDATE task SET status = 1 WHERE id IN "
            "(SELECT id FROM task WHERE status = 0 ORDER BY id LIMIT 100) RETURNING id, payload"
        ).fetchall()
        if not rows:
            break
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "UPDATE task SET status = 2, result = ? WHERE id = ?", ((b"r", r[0]) for r in rows)
        )
        conn.execute("COMMIT")
    return time.perf_counter() - started


if __name__ == "__main__":
    if sys.argv[1] == "fill":
        fill(sys.argv[2], int(sys.argv[3]))
    else:
        print(f"{drain(sys.argv[2]):.6f}")
