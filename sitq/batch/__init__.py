"""Batch processing on top of the public producer API.

:class:`BatchProcessor` fans a function out over many items in chunked
transactions, collects the results in bulk (never a query per task), shows
progress with ``tqdm``, retries just the failures, and can store a batch under
a name so another process, or a restarted notebook kernel, picks it up with
:meth:`BatchProcessor.open`. :class:`SyncBatchProcessor` is the same for
plain code, over a :class:`~sitq.SyncTaskQueue`.

Named batches live in the database (:mod:`sitq.batch.store`);
:meth:`BatchProcessor.enqueue_batch` says what ``if_exists`` does with a name
already taken, and :meth:`BatchProcessor.delete` frees one.
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
