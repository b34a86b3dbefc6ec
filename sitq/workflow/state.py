"""Where a workflow run's state lives: one SQLite file, ``state.db``, in the state
directory (``--state-dir``, else ``$SITQ_WORKFLOW_DIR``, else ``.sitq/workflows``).

Every change (an item started, an attempt, an item finished, a step finished)
is one committed transaction, so a run killed at any moment leaves a state that
``--resume`` can continue from: what was recorded succeeded is never run again.
The file is WAL with ``synchronous=NORMAL``, which survives any process crash
(like sitq's own default); it is created owner-only, because results are
stored pickled and loading a pickle can run code.

Why a file of its own and not the task database: a run needs no task database
at all when it runs in-process, the workflow layer uses only sitq's public API
(not the backend's tables), and the state stays with the host that runs the
workflow even when the tasks go to a shared PostgreSQL.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from sitq.workflow.errors import RunNotFound, WorkflowError
from sitq.workflow.kinds import ItemOutcome

DEFAULT_STATE_DIR = ".sitq/workflows"
STATE_FILE = "state.db"
PREVIEW_CHARS = 300

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    name TEXT,
    text TEXT NOT NULL,
    params BLOB NOT NULL,
    params_preview TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL,
    total INTEGER NOT NULL,
    has_items INTEGER NOT NULL,
    items BLOB,
    result BLOB,
    result_preview TEXT,
    error TEXT,
    started_at REAL NOT NULL,
    finished_at REAL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS items (
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    idx INTEGER NOT NULL,
    item_preview TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    result BLOB,
    result_preview TEXT,
    error TEXT,
    traceback TEXT,
    task_id TEXT,
    ran_on TEXT,
    started_at REAL,
    finished_at REAL,
    PRIMARY KEY (run_id, step, idx)
);
"""


def state_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The state directory: ``path``, else ``$SITQ_WORKFLOW_DIR``, else ``.sitq/workflows``."""
    return Path(path or os.environ.get("SITQ_WORKFLOW_DIR") or DEFAULT_STATE_DIR)


def preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """A bounded repr, for showing a value without loading it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def _dumps(value: Any) -> bytes | None:
    try:
        return cloudpickle.dumps(value)
    except Exception:
        return None  # kept as a preview only; a resumed run sees None


def _loads(blob: bytes | None) -> Any:
    return None if blob is None else cloudpickle.loads(blob)


@dataclass(frozen=True)
class RunRecord:
    """A run as stored."""

    id: str
    source: str
    name: str | None
    text: str
    params_preview: str
    status: str
    error: str | None
    host: str
    pid: int
    created_at: float
    updated_at: float
    finished_at: float | None
    params_blob: bytes

    @property
    def params(self) -> dict[str, Any]:
        """The run's params (unpickled)."""
        return _loads(self.params_blob) or {}

    def process_alive(self) -> bool | None:
        """Whether the process that runs it is alive (None when it ran on another host)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


@dataclass(frozen=True)
class StepRecord:
    """A step of a run as stored."""

    name: str
    position: int
    status: str
    total: int
    has_items: bool
    result_preview: str | None
    error: str | None
    started_at: float
    finished_at: float | None


@dataclass(frozen=True)
class ItemRecord:
    """An item of a step as stored."""

    index: int
    item_preview: str | None
    status: str
    attempts: int
    result_preview: str | None
    error: str | None
    traceback: str | None
    task_id: str | None
    ran_on: str | None
    started_at: float | None
    finished_at: float | None


class StateStore:
    """The runs, steps and items of the workflows run from one state directory."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = state_dir(directory)
        self.path = self.directory / STATE_FILE
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise WorkflowError(
                f"cannot open the workflow state file {self.path}: {exc}; check that the "
                "directory is writable, or choose another with --state-dir / $SITQ_WORKFLOW_DIR"
            ) from exc

    def close(self) -> None:
        """Close the file."""
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- runs -------------------------------------------------------------------------

    def create_run(
        self, run_id: str, source: str, name: str | None, text: str, params: dict[str, Any]
    ) -> None:
        """Record a new run, owned by this process."""
        now = time.time()
        blob = cloudpickle.dumps(params)
        self._db.execute(
            "INSERT INTO runs (id, source, name, text, params, params_preview, status, host, pid,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
            (run_id, source, name, text, blob, preview(params), socket.gethostname(),
             os.getpid(), now, now),
        )  # fmt: skip

    def run(self, run_id: str) -> RunRecord:
        """The run ``run_id``; RunNotFound if there is none."""
        row = self._db.execute(
            "SELECT id, source, name, text, params_preview, status, error, host, pid, created_at,"
            " updated_at, finished_at, params FROM runs WHERE id = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            raise RunNotFound(run_id, str(self.path))
        return RunRecord(*row)

    def runs(self, limit: int = 50) -> list[RunRecord]:
        """The most recent runs, newest first."""
        rows = self._db.execute(
            "SELECT id, source, name, text, params_preview, status, error, host, pid, created_at,"
            " updated_at, finished_at, params FROM runs ORDER BY created_at DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [RunRecord(*row) for row in rows]

    def take_over(self, run_id: str) -> None:
        """Mark a run as running in this process again (for a resume)."""
        self._db.execute(
            "UPDATE runs SET status = 'running', error = NULL, host = ?, pid = ?, updated_at = ?,"
            " finished_at = NULL WHERE id = ?",
            (socket.gethostname(), os.getpid(), time.time(), run_id),
        )

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        """Record how the run ended."""
        now = time.time()
        self._db.execute(
            "UPDATE runs SET status = ?, error = ?, updated_at = ?, finished_at = ? WHERE id = ?",
            (status, error, now, now, run_id),
        )

    # -- steps ------------------------------------------------------------------------

    def steps(self, run_id: str) -> list[StepRecord]:
        """The run's steps that have started, in order."""
        rows = self._db.execute(
            "SELECT name, position, status, total, has_items, result_preview, error, started_at,"
            " finished_at FROM steps WHERE run_id = ? ORDER BY position",
            (run_id,),
        ).fetchall()
        return [StepRecord(*row) for row in rows]

    def step(self, run_id: str, name: str) -> StepRecord | None:
        """One step of the run, or None if it has not started."""
        return next((s for s in self.steps(run_id) if s.name == name), None)

    def step_result(self, run_id: str, name: str) -> Any:
        """A finished step's result (unpickled)."""
        row = self._db.execute(
            "SELECT result FROM steps WHERE run_id = ? AND name = ?", (run_id, name)
        ).fetchone()
        return _loads(row[0]) if row else None

    def step_items(self, run_id: str, name: str) -> list[Any]:
        """The items a started step runs over (fixed when it first started)."""
        row = self._db.execute(
            "SELECT items FROM steps WHERE run_id = ? AND name = ?", (run_id, name)
        ).fetchone()
        return _loads(row[0]) if row else []

    def begin_step(
        self, run_id: str, name: str, position: int, items: Sequence[Any], has_items: bool
    ) -> None:
        """Record that a step starts over ``items``, all pending."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO steps (run_id, name, position, status, total, has_items, items,"
                " started_at) VALUES (?, ?, ?, 'running', ?, ?, ?, ?)",
                (
                    run_id,
                    name,
                    position,
                    len(items),
                    has_items,
                    cloudpickle.dumps(list(items)),
                    now,
                ),
            )
            db.executemany(
                "INSERT INTO items (run_id, step, idx, item_preview, status)"
                " VALUES (?, ?, ?, ?, 'pending')",
                [(run_id, name, i, preview(item) if has_items else None)
                 for i, item in enumerate(items)],
            )  # fmt: skip

    def restart_step(self, run_id: str, name: str) -> None:
        """Mark a step that had started before as running again."""
        self._db.execute(
            "UPDATE steps SET status = 'running', error = NULL, finished_at = NULL"
            " WHERE run_id = ? AND name = ?",
            (run_id, name),
        )

    def finish_step(
        self, run_id: str, name: str, status: str, result: Any, error: str | None = None
    ) -> None:
        """Record how a step ended and its result."""
        self._db.execute(
            "UPDATE steps SET status = ?, result = ?, result_preview = ?, error = ?,"
            " finished_at = ? WHERE run_id = ? AND name = ?",
            (status, _dumps(result), preview(result), error, time.time(), run_id, name),
        )

    # -- items ------------------------------------------------------------------------

    def items(self, run_id: str, step: str) -> list[ItemRecord]:
        """A step's items, in order."""
        rows = self._db.execute(
            "SELECT idx, item_preview, status, attempts, result_preview, error, traceback,"
            " task_id, ran_on, started_at, finished_at FROM items"
            " WHERE run_id = ? AND step = ? ORDER BY idx",
            (run_id, step),
        ).fetchall()
        return [ItemRecord(*row) for row in rows]

    def item_values(self, run_id: str, step: str) -> dict[int, Any]:
        """The results of a step's succeeded items, by index."""
        rows = self._db.execute(
            "SELECT idx, result FROM items WHERE run_id = ? AND step = ? AND status = 'succeeded'",
            (run_id, step),
        ).fetchall()
        return {idx: _loads(blob) for idx, blob in rows}

    def item_started(self, run_id: str, step: str, index: int, ran_on: str) -> None:
        """An item starts (attempts are counted as they begin)."""
        self._db.execute(
            "UPDATE items SET status = 'running', ran_on = ?, error = NULL, traceback = NULL,"
            " started_at = ?, finished_at = NULL WHERE run_id = ? AND step = ? AND idx = ?",
            (ran_on, time.time(), run_id, step, index),
        )

    def item_attempt(self, run_id: str, step: str, index: int, attempt: int) -> None:
        """Attempt number ``attempt`` of an item begins."""
        self._db.execute(
            "UPDATE items SET attempts = ? WHERE run_id = ? AND step = ? AND idx = ?",
            (attempt, run_id, step, index),
        )

    def item_submitted(self, run_id: str, step: str, index: int, task_id: str) -> None:
        """An item became sitq task ``task_id`` (a resume waits for it rather than rerun it)."""
        self._db.execute(
            "UPDATE items SET task_id = ? WHERE run_id = ? AND step = ? AND idx = ?",
            (task_id, run_id, step, index),
        )

    def item_finished(self, run_id: str, step: str, index: int, outcome: ItemOutcome) -> None:
        """Record an item's outcome."""
        status = "succeeded" if outcome.ok else "failed"
        self._db.execute(
            "UPDATE items SET status = ?, attempts = ?, result = ?, result_preview = ?, error = ?,"
            " traceback = ?, finished_at = ? WHERE run_id = ? AND step = ? AND idx = ?",
            (status, outcome.attempts, _dumps(outcome.value) if outcome.ok else None,
             preview(outcome.value) if outcome.ok else None, outcome.error, outcome.traceback,
             time.time(), run_id, step, index),
        )  # fmt: skip
