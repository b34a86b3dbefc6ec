"""Batch processing with sitq.batch: validate, compute, enqueue in chunks, collect.

Validates user records and processes the valid ones, computes metrics over
batches of numbers, enqueues a 100-item batch in chunks under a name, watches
its progress, collects its results in bulk, and prints the performance report
that ``BatchProcessor`` measures. Two in-process workers (concurrency 3 and 2)
run the tasks from one SQLite file, which lives in a temporary directory that
is removed at the end, so the example leaves nothing behind.

Run it with::

    python examples/batch_processing.py
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from typing import Any

from sitq import TaskQueue, Worker
from sitq.backends.sqlite import SQLiteBackend
from sitq.batch import BatchProcessor
from sitq.serialization import CloudpickleSerializer


# Step 1: the tasks
async def process_item(item_id: int, data: Any) -> dict[str, Any]:
    """Transform one item (simulated work)."""
    await asyncio.sleep(0.1)
    if isinstance(data, dict) and "value" in data:
        original, processed = data["value"], data["value"] * 2
    else:
        original, processed = data, str(data).upper()
    return {
        "item_id": item_id,
        "original_value": original,
        "processed_value": processed,
        "status": "processed",
        "timestamp": time.time(),
    }


async def validate_data(item_id: int, data: dict[str, Any]) -> dict[str, Any]:
    """Check one user record: a plausible email and age."""
    await asyncio.sleep(0.05)
    errors = []
    if "email" in data and "@" not in data["email"]:
        errors.append("Invalid email format")
    if "age" in data and (not isinstance(data["age"], int) or not 0 <= data["age"] <= 150):
        errors.append("Invalid age")
    return {"item_id": item_id, "is_valid": not errors, "errors": errors, "warnings": []}


async def calculate_metrics(data: list[float]) -> dict[str, float]:
    """Count, sum, average, min and max of a list of numbers."""
    await asyncio.sleep(0.2)
    if not data:
        return {"count": 0, "sum": 0, "average": 0}
    return {
        "count": len(data),
        "sum": sum(data),
        "average": sum(data) / len(data),
        "min": min(data),
        "max": max(data),
    }


# Step 2: a pipeline on BatchProcessor
async def process_user_data(bp: BatchProcessor, users: list[dict[str, Any]]) -> dict[str, Any]:
    """Validate every user, then process the valid ones."""
    print(f"Processing {len(users)} user records...")
    validation_ids = await bp.enqueue_batch(validate_data, list(enumerate(users)))
    print(f"Enqueued {len(validation_ids)} validation tasks")
    # map-style collection: the values in input order (raises if one failed).
    validations = await bp.gather(validation_ids, progress=False, timeout=30)
    checked = zip(users, validations, strict=True)
    valid_users = [user for user, check in checked if check["is_valid"]]
    print(f"Validation complete: {len(valid_users)} valid users out of {len(users)}")

    processed = await bp.map(process_item, list(enumerate(valid_users)), progress=False)
    print(f"Processed {len(processed)} valid users")
    return {
        "total_users": len(users),
        "valid_users": len(valid_users),
        "processed_users": len(processed),
        "success_rate": len(valid_users) / len(users) if users else 0,
    }


async def process_number_batches(
    bp: BatchProcessor, number_batches: list[list[float]]
) -> list[dict[str, Any]]:
    """One metrics task per list of numbers."""
    print(f"Processing {len(number_batches)} number batches...")
    ids = await bp.enqueue_batch(calculate_metrics, [(numbers,) for numbers in number_batches])
    print(f"Enqueued {len(ids)} metrics calculation tasks")
    results = await bp.collect_results(ids, timeout=30)
    return [
        {"batch_id": i, "metrics": results[task_id].value}
        for i, task_id in enumerate(ids)
        if task_id in results and results[task_id].ok
    ]


# Step 3: the demonstration
async def main(db_path: str) -> None:
    backend = SQLiteBackend(db_path)
    serializer = CloudpickleSerializer()
    queue = TaskQueue(backend, serializer)
    await queue.connect()
    workers = [
        Worker(backend, serializer, concurrency=3),
        Worker(backend, serializer, concurrency=2),
    ]
    await asyncio.gather(*[worker.start() for worker in workers])
    bp = BatchProcessor(queue, batch_size=10)
    try:
        print("=== Batch Processing Example ===\n")

        print("1. User Data Processing:")
        sample_users = [
            {"name": "Alice", "email": "alice@example.com", "age": 30},
            {"name": "Bob", "email": "bob@example.com", "age": 25},
            {"name": "Charlie", "email": "invalid-email", "age": 35},
            {"name": "Diana", "email": "diana@example.com", "age": -5},
            {"name": "Eve", "email": "eve@example.com", "age": 28},
        ] * 4
        started = time.perf_counter()
        summary = await process_user_data(bp, sample_users)
        print(f"User processing completed in {time.perf_counter() - started:.2f}s")
        print(f"   Results: {summary}")

        print("\n2. Number Batch Processing:")
        number_batches = [
            [1.1, 2.2, 3.3, 4.4, 5.5],
            [10, 20, 30, 40, 50],
            [0.1, 0.2, 0.3],
            [100, 200, 300, 400],
            [],
        ] * 3
        started = time.perf_counter()
        metrics = await process_number_batches(bp, number_batches)
        print(f"Batch processing completed in {time.perf_counter() - started:.2f}s")
        print(f"   Processed {len(metrics)} batches; the first: {metrics[0]['metrics']}")

        print("\n3. Large Batch Processing:")
        dataset = [{"value": i, "category": f"item_{i % 10}"} for i in range(100)]
        started = time.perf_counter()
        # A named batch is stored in the database: bp.open("large") would find it
        # again from another process, or after a restart.
        large_ids = await bp.enqueue_batch(
            process_item, list(enumerate(dataset)), batch_size=20, batch_id="large"
        )
        print(f"Enqueued {len(large_ids)} tasks in {time.perf_counter() - started:.2f}s")
        print(f"   Progress right after: {await bp.progress('large')}")
        started = time.perf_counter()
        large = await bp.collect_results("large", timeout=60, progress=True)
        succeeded = sum(1 for result in large.values() if result.ok)
        print(f"Collected {succeeded} results in {time.perf_counter() - started:.2f}s")
        print(f"   Progress now: {await bp.progress('large')}")

        print("\n4. Performance Summary:")
        print(bp.report())
    finally:
        await asyncio.gather(*[worker.stop() for worker in workers])
        await queue.close()

    print("\nBatch processing example completed!")


if __name__ == "__main__":
    # A fresh database in a temporary directory, removed afterwards (with its
    # -wal and -shm files), so every run starts clean and leaves no files behind.
    with tempfile.TemporaryDirectory(prefix="sitq-batch-") as tmp:
        asyncio.run(main(os.path.join(tmp, "batch_processing_queue.db")))
