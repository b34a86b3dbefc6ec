"""Declarative pipelines: a :class:`Pipeline` template declares its input fields
and the work of one instance; a :class:`BatchPipeline` splits large inputs
into batches and runs one instance per batch in parallel, in a local process
pool or on sitq workers.

::

    from sitq.pipeline import BatchPipeline, Pipeline
    from sitq.pipeline.fields import FileInputDataField, InputDataField
    from sitq.pipeline.signal import SoftSignal
"""

from sitq.pipeline.batch import BatchPipeline
from sitq.pipeline.errors import (
    FieldError,
    FieldTypeError,
    InstanceFailed,
    PipelineDefinitionError,
    PipelineError,
    PipelineTimeout,
)
from sitq.pipeline.fields import FileInputDataField, InputDataField
from sitq.pipeline.signal import BatchEvent, InstanceEvent, SoftSignal
from sitq.pipeline.template import Pipeline

__all__ = [
    "BatchEvent",
    "BatchPipeline",
    "FieldError",
    "FieldTypeError",
    "FileInputDataField",
    "InputDataField",
    "InstanceEvent",
    "InstanceFailed",
    "Pipeline",
    "PipelineDefinitionError",
    "PipelineError",
    "PipelineTimeout",
    "SoftSignal",
]
