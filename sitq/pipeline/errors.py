"""The exceptions of the pipeline layer; each derives from :class:`sitq.SitqError`."""

from __future__ import annotations

from typing import Any

from sitq.errors import SitqError


class PipelineError(SitqError):
    """Base class of the pipeline layer's errors."""


class PipelineDefinitionError(PipelineError, TypeError):
    """A ``Pipeline`` or ``BatchPipeline`` class is declared in a way that cannot work."""


class FieldError(PipelineError, ValueError):
    """A value given for a pipeline field is missing or unusable; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class FieldTypeError(FieldError, TypeError):
    """A value given for a pipeline field has the wrong type."""


class PipelineTimeout(PipelineError, TimeoutError):
    """``execute(timeout=...)`` ran out before every instance finished (say, every
    worker serving the queue died).

    The unfinished instances' tasks were cancelled (or their pool processes
    stopped). ``outcomes`` maps the index of each instance that did finish to
    its outcome (a value or an :class:`InstanceFailed`); ``unfinished`` lists
    the indices of the others that had started.
    """

    def __init__(self, timeout: float, outcomes: dict[int, Any], unfinished: list[int]) -> None:
        super().__init__(timeout, len(outcomes), unfinished)
        self.timeout = timeout
        self.outcomes = outcomes
        self.unfinished = unfinished

    def __str__(self) -> str:
        return (
            f"the batch pipeline did not finish within {self.timeout:g} s: "
            f"{len(self.outcomes)} instances finished, {len(self.unfinished)} were still "
            "pending and were cancelled (are workers serving the queue?); the finished "
            "outcomes are in .outcomes"
        )


class InstanceFailed(PipelineError):
    """The outcome of a pipeline instance that raised (or could not run).

    It is the same wherever the instance ran: ``error`` is ``"ExcType: message"``,
    ``traceback`` the text of the traceback where it ran. In the local process
    pool the original exception comes back too, as ``exception`` (and
    ``__cause__``) when it could be pickled; on sitq workers only its text is
    stored, and ``task_id`` names the task.
    """

    def __init__(
        self,
        index: int,
        error: str,
        traceback: str | None = None,
        *,
        exception: BaseException | None = None,
        task_id: str | None = None,
    ) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error
        self.traceback = traceback
        self.exception = exception
        self.task_id = task_id
        self.__cause__ = exception

    def __reduce__(self) -> Any:
        # Keep the fields through pickling; the original exception may not pickle.
        state = {"task_id": self.task_id}
        return (type(self), (self.index, self.error, self.traceback), state)

    def __str__(self) -> str:
        where = f" (task {self.task_id})" if self.task_id else ""
        return f"pipeline instance {self.index}{where} failed: {self.error}"
