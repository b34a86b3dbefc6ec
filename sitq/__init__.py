"""sitq: a crash-safe Python task queue on SQLite, with no server to run.

The producer API is :class:`TaskQueue` (async) and :class:`SyncTaskQueue`;
:class:`Worker` runs tasks; ``sitq worker`` runs workers as a daemon.
"""

from typing import TYPE_CHECKING, Any

from sitq.backends.base import (
    LimitRecord,
    Progress,
    ScheduleRecord,
    SchemaState,
    TaskLinks,
    TaskPage,
    TaskRecord,
    WorkerRecord,
)
from sitq.canvas import Signature, chain, chord, group
from sitq.current import CurrentTask, current_task
from sitq.errors import (
    ConfigurationError,
    CorruptRow,
    DatabaseError,
    DatabaseUnavailable,
    InvalidComposition,
    InvalidDependency,
    InvalidTask,
    NotASitqDatabase,
    NotConnected,
    ParentMissing,
    SchemaVersionError,
    SerializationError,
    SitqError,
    StorageError,
    TaskFailed,
    TaskNotFound,
    WorkerCrashed,
)
from sitq.overview import Overview, QueueSummary, WorkerSummary
from sitq.queue import TaskQueue
from sitq.records import CancelOutcome
from sitq.serialization import CloudpickleSerializer
from sitq.sync_queue import SyncTaskQueue
from sitq.task import Result, TaskOptions, TaskStatus
from sitq.watch import WatchEvent
from sitq.worker import Worker

if TYPE_CHECKING:
    from sitq.backends.sqlite import SQLiteBackend

__all__ = [
    "CancelOutcome",
    "CloudpickleSerializer",
    "ConfigurationError",
    "CorruptRow",
    "CurrentTask",
    "DatabaseError",
    "DatabaseUnavailable",
    "InvalidComposition",
    "InvalidDependency",
    "InvalidTask",
    "LimitRecord",
    "NotASitqDatabase",
    "NotConnected",
    "Overview",
    "ParentMissing",
    "Progress",
    "QueueSummary",
    "Result",
    "SQLiteBackend",
    "ScheduleRecord",
    "SchemaState",
    "SchemaVersionError",
    "SerializationError",
    "Signature",
    "SitqError",
    "StorageError",
    "SyncTaskQueue",
    "TaskFailed",
    "TaskLinks",
    "TaskNotFound",
    "TaskOptions",
    "TaskPage",
    "TaskQueue",
    "TaskRecord",
    "TaskStatus",
    "WatchEvent",
    "Worker",
    "WorkerCrashed",
    "WorkerRecord",
    "WorkerSummary",
    "chain",
    "chord",
    "current_task",
    "group",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # SQLiteBackend is imported on first use: `import sitq` stays free of aiosqlite
    # for code that only talks to PostgreSQL.
    if name == "SQLiteBackend":
        from sitq.backends.sqlite import SQLiteBackend

        return SQLiteBackend
    raise AttributeError(f"module 'sitq' has no attribute {name!r}")
