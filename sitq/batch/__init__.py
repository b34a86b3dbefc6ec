"""Batch processing on top of the public producer API.

:class:`BatchProcessor` fans a function out over many items in chunked
transactions, collects the results in bulk (never a query per task), shows
progress with ``tqdm``, retries just the failures, and can store a batch under
a name so another process, or a restarted notebook kernel, picks it up with
:meth:`BatchProcessor.open`. :class:`SyncBatchProcessor` is the same for
plain code, over a :class:`~sitq.SyncTaskQueue`.

Named batches live in the database. A task pruned after its ``result_ttl``
(or purged) leaves its batch; :class:`BatchProgress` counts it as missing.
Enqueueing under a name that exists raises :class:`BatchExists` unless
``if_exists="append"`` or ``"resume"``; :meth:`BatchProcessor.delete` forgets
a batch (never its tasks) so the name can be used again. Producers resuming
one batch at once (``if_exists="resume"``) append with a compare-and-set on
the batch's size, so each item is enqueued once whoever gets there first.
"""

from sitq.batch.errors import (
    BatchExists,
    BatchNotFound,
    BatchSizeChanged,
    BatchTimeout,
    TaskExpired,
)
from sitq.batch.processor import Batch, BatchProcessor
from sitq.batch.progress import BatchProgress
from sitq.batch.report import BatchReport
from sitq.batch.store import BatchStore, StoredBatch
from sitq.batch.sync import SyncBatchProcessor

__all__ = [
    "Batch",
    "BatchExists",
    "BatchNotFound",
    "BatchProcessor",
    "BatchProgress",
    "BatchReport",
    "BatchSizeChanged",
    "BatchStore",
    "BatchTimeout",
    "StoredBatch",
    "SyncBatchProcessor",
    "TaskExpired",
]
