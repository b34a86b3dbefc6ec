"""sitq: a crash-safe Python task queue on SQLite, with no server to run.

The producer API is :class:`TaskQueue` (async) and :class:`SyncTaskQueue`;
:class:`Worker` runs tasks; ``sitq worker`` runs workers as a daemon.
"""

from sitq.errors import (
    ConfigurationError,
    DatabaseError,
    InvalidTask,
    NotASitqDatabase,
    NotConnected,
    SchemaVersionError,
    SerializationError,
    SitqError,
    TaskFailed,
    TaskNotFound,
)
from sitq.queue import TaskQueue
from sitq.sync_queue import SyncTaskQueue
from sitq.task import Result, TaskOptions, TaskStatus
from sitq.worker import Worker

__all__ = [
    "ConfigurationError",
    "DatabaseError",
    "InvalidTask",
    "NotASitqDatabase",
    "NotConnected",
    "Result",
    "SchemaVersionError",
    "SerializationError",
    "SitqError",
    "SyncTaskQueue",
    "TaskFailed",
    "TaskNotFound",
    "TaskOptions",
    "TaskQueue",
    "TaskStatus",
    "Worker",
]

__version__ = "0.1.0"
