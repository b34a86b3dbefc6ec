"""The signals a ``BatchPipeline`` sends while it runs.

A batch pipeline declares the signals it sends in ``listen_to_signals``::

    class SimpleBatch(BatchPipeline):
        pipeline_template = Simple
        listen_to_signals = [SoftSignal("task_completed"), SoftSignal("task_failed")]

        def on_task_failed(self, event: InstanceEvent) -> None:   # optional: reacts
            print(f"batch {event.index} failed: {event.exception}")

    SimpleBatch.connect("task_completed", lambda event: print(event.result))

The names are ``task_completed`` and ``task_failed`` (once per instance, with
an :class:`InstanceEvent`) and ``batch_started`` and ``batch_finished`` (once
per run, with a :class:`BatchEvent`). They fire in the process that runs
``execute()``, when the outcome is known, wherever the instance ran.

A signal is *soft*: a receiver that raises is logged and skipped; it never
stops the run or changes an outcome. Receivers may be coroutine functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sitq.signals import Signal

if TYPE_CHECKING:
    from sitq.pipeline.batch import BatchPipeline
    from sitq.pipeline.template import Pipeline

__all__ = ["SIGNAL_NAMES", "BatchEvent", "InstanceEvent", "SoftSignal"]

#: The signals a batch pipeline can send, and what each carries.
SIGNAL_NAMES: dict[str, str] = {
    "task_completed": "An instance returned; InstanceEvent.result is its result.",
    "task_failed": "An instance raised or could not run; InstanceEvent.exception says why.",
    "batch_started": "A run began (BatchEvent, before any instance).",
    "batch_finished": "A run ended (BatchEvent with the counts).",
}


@dataclass(frozen=True)
class InstanceEvent:
    """The outcome of one pipeline instance.

    ``result`` is set for ``task_completed``; ``exception`` (an
    :class:`~sitq.pipeline.errors.InstanceFailed`) for ``task_failed``.
    ``duration`` is seconds from submission to outcome.
    """

    signal: str
    batch: BatchPipeline
    instance: Pipeline
    index: int
    result: Any = None
    exception: BaseException | None = None
    duration: float = 0.0


@dataclass(frozen=True)
class BatchEvent:
    """A batch-pipeline run starting or finishing (the counts are final at the end)."""

    signal: str
    batch: BatchPipeline
    instances: int = 0
    completed: int = 0
    failed: int = 0
    duration: float = 0.0


class SoftSignal(Signal[Any]):
    """A pipeline signal, by name: one of :data:`SIGNAL_NAMES`.

    It is a :class:`sitq.signals.Signal`: ``connect(receiver)`` (also as a
    decorator), ``disconnect(receiver)``, ``send(event)``. Usually you connect
    through the pipeline class, ``SimpleBatch.connect("task_failed", receiver)``.
    """

    def __init__(self, name: str) -> None:
        if name not in SIGNAL_NAMES:
            raise ValueError(
                f"SoftSignal({name!r}): unknown signal; a batch pipeline sends "
                f"{', '.join(SIGNAL_NAMES)}"
            )
        super().__init__(name, SIGNAL_NAMES[name])

    def __repr__(self) -> str:
        return f"SoftSignal({self.name!r})"
