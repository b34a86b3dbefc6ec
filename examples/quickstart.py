"""sitq quickstart: enqueue tasks, run a worker, get results.

Everything happens in this one process: a producer (``TaskQueue``) stores tasks
in an SQLite file and a ``Worker`` runs them. In production the worker usually
runs as its own process (``sitq worker``); see examples/worker_daemon.

Run it with::

    python examples/quickstart.py
"""

import asyncio
import os
import tempfile

import sitq


# A task is any importable function: a coroutine function...
async def add(a: int, b: int) -> int:
    await asyncio.sleep(0.01)  # pretend to do some I/O
    return a + b


# ...or a plain function (the worker runs these in a thread).
def word_count(text: str) -> int:
    return len(text.split())


def always_fails(x: int) -> int:
    raise ValueError(f"cannot handle {x}")


async def main(db_path: str) -> None:
    # `async with` connects to the database (creating it) and closes it at the end.
    async with sitq.TaskQueue(db_path) as queue:
        # A worker serving the "default" queue, running up to 4 tasks at once.
        worker = sitq.Worker(db_path, concurrency=4)
        await worker.start()  # returns once the worker is running
        try:
            # enqueue() stores the call and returns its task id.
            add_id = await queue.enqueue(add, 2, 3)
            count_id = await queue.enqueue(word_count, "the quick brown fox")

            # get_result() waits (here at most 10 s) for the task to finish.
            added = await queue.get_result(add_id, timeout=10)
            counted = await queue.get_result(count_id, timeout=10)
            print(f"add(2, 3) -> {added.value} ({added.status.value})")
            print(f"word_count(...) -> {counted.unwrap()}")

            # Options go through with_options(): here, retry twice, 10 ms apart
            # (doubling). A failing task's Result carries its error instead.
            retrying = queue.with_options(max_retries=2, retry_backoff=0.01)
            failed_id = await retrying.enqueue(always_fails, 7)
            failed = await queue.get_result(failed_id, timeout=10)
            print(f"always_fails(7) -> {failed.status.value} after {failed.attempts} attempts")
            print(f"  error: {failed.error}")

            # unwrap() returns the value, or raises TaskFailed with the remote traceback.
            try:
                failed.unwrap()
            except sitq.TaskFailed as exc:
                print(f"  unwrap() raised TaskFailed: {exc.error}")
        finally:
            # Graceful stop: finish what runs, claim nothing new.
            await worker.stop()

    print("Quickstart completed!")


if __name__ == "__main__":
    # Use a throwaway database so the example leaves no files behind. Real code
    # would use a fixed path such as "tasks.db" (or $SITQ_DB; the default is sitq.db).
    with tempfile.TemporaryDirectory(prefix="sitq-quickstart-") as tmp:
        asyncio.run(main(os.path.join(tmp, "quickstart.db")))
