"""The task the sitq benchmarks run: imported by `sitq worker --import bench_tasks`."""


def noop() -> None:
    """Does nothing: the benchmarks measure the queue, not the work."""
    return None
