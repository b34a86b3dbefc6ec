"""The task the sitq benchmarks run: imported by `sitq worker --import bench_tasks`."""


def noop() -> None:
    """Does nothing: the benchmarks measure the queue, not the work."""
    return None


async def async_noop() -> None:
    """Does nothing, on the worker's event loop (as the PostgreSQL baselines' jobs do)."""
    return None


def hash_items(items: int, report: bool, block: int = 4096) -> float:
    """Hash ``items`` blocks of ``block`` bytes (about 3 us each here), reporting
    progress after every one if ``report``; returns the loop's own seconds."""
    import hashlib
    import time

    from sitq import current_task

    data = b"x" * block
    task = current_task()
    assert task is not None
    began = time.perf_counter()
    if report:
        for done in range(1, items + 1):
            hashlib.sha256(data).digest()
            task.report_progress(done, items)
    else:
        for _ in range(items):
            hashlib.sha256(data).digest()
    return time.perf_counter() - began


def count_results(values: list[None]) -> int:
    """A chord callback: how many results it received."""
    return len(values)
