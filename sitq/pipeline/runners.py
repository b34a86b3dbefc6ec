"""The old name of :mod:`sitq.pipeline.executors`: tasks enqueued before the rename
name ``sitq.pipeline.runners.run_instance`` in their payloads, and must still run."""

from sitq.pipeline.executors import run_instance, run_instance_async

__all__ = ["run_instance", "run_instance_async"]
