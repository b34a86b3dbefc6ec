"""Adaptive in-process batching: a numpy batch function fed one row at a time.

A batch function (here: double every element) is called once per batch of
rows; callers submit single rows from threads or coroutines and each gets its
own row back. The processor adapts the batch size to the measured processing
time and to the load. Nothing is stored: no database, no worker.

Run it with::

    python examples/adaptive_inference.py
"""

import asyncio

import numpy as np

from sitq.adaptive import AdaptiveBatchConfig, AdaptiveBatchProcessor, BatchPriority


# Define a simple processing function: it receives the rows stacked (np.vstack)
def process_batch(batch: np.ndarray) -> np.ndarray:
    return batch * 2  # Example: Double each element in the batch


# Configure the processor: batches of 50 to 200 rows, starting at 100
config = AdaptiveBatchConfig(
    initial_batch_size=100,
    min_batch_size=50,
    max_batch_size=200,
    max_queue_size=1000,
    batch_timeout=1.0,
    min_batch_interval=0.1,
    max_retries=3,
    retry_delay=0.5,
    enable_priority_queue=True,
    enable_monitoring=True,
    monitoring_window=100,
    enable_health_monitoring=True,
    health_check_interval=10.0,
    memory_warning_threshold=80.0,
    memory_critical_threshold=90.0,
    queue_warning_threshold=500,
    queue_critical_threshold=800,
    enable_memory_optimization=True,
    gc_batch_threshold=100,
)


async def score_urgent_rows(processor: AdaptiveBatchProcessor) -> None:
    """The asyncio face: await one row's result without blocking the event loop."""
    rows = [np.full(10, float(i)) for i in range(20)]
    doubled = await asyncio.gather(
        *(processor.submit(row, priority=BatchPriority.HIGH) for row in rows)
    )
    assert all(np.array_equal(d, r * 2) for d, r in zip(doubled, rows, strict=True))
    print("high-priority results all correct")


def main() -> None:
    print("=== Adaptive Inference Example ===")
    # Initialize the processor
    processor = AdaptiveBatchProcessor(config)

    # Start the processor
    processor.start(process_batch)

    # Enqueue items for processing (no result expected)
    for _ in range(1000):
        item = np.random.rand(10)  # Example: 10-element numpy array
        processor.enqueue(item)

    # Enqueue an item and get a future for the result
    future = processor.enqueue_predict(np.array([4, 5, 6]))
    result = future.result()  # Block until result is available
    print(f"enqueue_predict([4 5 6]) -> {result}")

    asyncio.run(score_urgent_rows(processor))

    # Retrieve and print statistics
    stats = processor.get_stats()
    print("Processing Statistics:")
    for key in (
        "batch_count",
        "total_processed",
        "avg_batch_size",
        "current_batch_size",
        "avg_latency_ms",
        "p99_latency_ms",
        "throughput",
        "error_rate",
        "queue_size",
    ):
        value = stats[key]
        print(f"  {key}: {round(value, 2) if isinstance(value, float) else value}")

    # Stop the processor: what is still queued is processed first
    processor.stop(timeout=5.0)
    final = processor.get_stats()
    print(
        f"Processed {final['total_processed']} items in {final['batch_count']} batches "
        f"({final['total_errors']} failed, {final['total_unprocessed']} left unprocessed)"
    )
    print("Adaptive inference example completed!")


if __name__ == "__main__":
    main()
