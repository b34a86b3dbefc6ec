"""The exceptions sitq raises. Every one derives from :class:`SitqError`.

Each message says what was wrong and, where there is one, what to do about it.
"""

from __future__ import annotations


class SitqError(Exception):
    """Base class of every error sitq raises."""


class ConfigurationError(SitqError, ValueError):
    """An option, URL or argument that sitq cannot use."""


class DatabaseError(SitqError):
    """The database cannot be opened, created or used."""


class StorageError(DatabaseError):
    """A database operation failed (the disk is full, an I/O error, the server
    refused the statement). The original error is the ``__cause__``."""


class DatabaseUnavailable(StorageError):
    """The database cannot be reached now (a server restart, a dropped
    connection); the same call may succeed once it is back."""


class CorruptRow(DatabaseError):
    """A stored row holds a value sitq never writes (for example an unknown status)."""


class SchemaVersionError(DatabaseError):
    """The database was written by a sitq with an incompatible schema version."""


class NotASitqDatabase(DatabaseError):
    """The file exists but is not a sitq database."""


class SerializationError(SitqError):
    """A callable, argument, return value or stored payload could not be (de)serialized."""


class PayloadRejected(SerializationError):
    """A signed serializer refused bytes that are unsigned or fail their signature.

    The bytes were never deserialized.
    """


class TaskNotFound(SitqError, KeyError):
    """No task has the given id (it never existed, or its result was pruned)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self.task_id = task_id

    def __str__(self) -> str:
        return (
            f"no task with id {self.task_id!r}: check the id, or its result may have "
            "been pruned after its result_ttl"
        )


class TaskFailed(SitqError):
    """A task ended failed or cancelled; carries the remote error and traceback."""

    def __init__(
        self,
        task_id: str,
        error: str | None,
        traceback: str | None = None,
        status: str = "failed",
    ) -> None:
        super().__init__(task_id, error)
        self.task_id = task_id
        self.error = error
        self.traceback = traceback
        self.status = status

    def __str__(self) -> str:
        text = f"task {self.task_id} {self.status}: {self.error}"
        if self.traceback:
            text += "\n\nRemote traceback:\n" + self.traceback.rstrip()
        return text


class NotConnected(SitqError, RuntimeError):
    """A queue or backend was used before ``connect()`` or after ``close()``."""


class InvalidTask(SitqError, TypeError):
    """What was passed as a task cannot be one (for example, it is not callable)."""


class WorkerCrashed(SitqError):
    """A worker stopped by itself because an internal part of it failed (its
    claimed tasks were released); the log says which part and why."""


class InvalidDependency(ConfigurationError):
    """A task cannot wait for the tasks it names: an unknown parent id (one from
    another database is unknown here too), itself, the same parent twice, or a
    cycle. Nothing of the call was enqueued."""


class InvalidComposition(ConfigurationError):
    """A chain, group or chord that cannot be submitted (an empty group, a member
    that is not a signature, a chord without a callback). Nothing was enqueued."""


class ParentMissing(SitqError):
    """A step that takes its parents' results (a chain's next step, a chord's
    callback) found a parent's row gone: it was deleted after it finished (purged,
    or pruned by an older sitq) before this step ran, so its result cannot be
    passed. The step ends failed with this error, naming the parent, rather than
    run with a shorter or shifted list of results. Submit the composition again;
    purge finished tasks only once their dependents have finished."""
