"""In-process adaptive batching: single items in, one call per batch, each caller its result.

::

    import numpy as np
    from sitq.adaptive import AdaptiveBatchConfig, AdaptiveBatchProcessor, BatchPriority

    processor = AdaptiveBatchProcessor(AdaptiveBatchConfig(batch_timeout=0.005))
    processor.start(lambda batch: batch * 2)      # batch: the rows stacked, np.vstack-style
    future = processor.enqueue_predict(np.array([1.0, 2.0]), priority=BatchPriority.HIGH)
    future.result()                               # array([2., 4.])
    processor.stop(timeout=5.0)

Stands on its own: no database, no TaskQueue. numpy is needed only for numpy
items; psutil only for the default memory health source (``/proc/meminfo``
stands in without it).
"""

from sitq.adaptive.config import AdaptiveBatchConfig, BatchPriority
from sitq.adaptive.errors import BatchOutputError, ProcessorStoppedError, QueueFullError
from sitq.adaptive.processor import AdaptiveBatchProcessor
from sitq.adaptive.stats import BatchStats

__all__ = [
    "AdaptiveBatchConfig",
    "AdaptiveBatchProcessor",
    "BatchOutputError",
    "BatchPriority",
    "BatchStats",
    "ProcessorStoppedError",
    "QueueFullError",
]
