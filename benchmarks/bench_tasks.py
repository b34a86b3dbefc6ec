"""The task the sitq benchmarks run: imported by `sitq worker --import bench_tasks`."""


def noop() -> None:
    """Does nothing: the benchmarks measure the queue, not the work."""
    return None


async def async_noop() -> None:
    """Does nothing, on the worker's event loop (as the PostgreSQL baselines' jobs do)."""
    return None


def count_results(values: list[None]) -> int:
    """A chord callback: how many results it received."""
    return len(values)
