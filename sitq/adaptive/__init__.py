"""In-process adaptive batching: single items in, one call per batch, each caller its result.

See :class:`AdaptiveBatchProcessor`. Stands on its own: no database, no
TaskQueue. numpy is needed only for numpy items; psutil only for the default
memory health source (``/proc/meminfo`` stands in without it).
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
