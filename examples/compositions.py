"""sitq compositions: tasks that build on tasks (chain, group, chord, depends_on).

The database keeps the dependencies: a step becomes due in the same transaction
that finishes its last parent, so nothing polls and a chord's callback runs once.
A worker runs in this process here; ``sitq worker`` processes work the same way.

Run it with::

    python examples/compositions.py
"""

import asyncio
import os
import tempfile

from sitq import TaskQueue, TaskStatus, Worker, chain, chord, group


def fetch(page: int) -> list[int]:
    return list(range(page * 3, page * 3 + 3))


def count(items: list[int]) -> int:
    return len(items)


def double(x: int) -> int:
    return x * 2


def total(values: list[int]) -> int:
    return sum(values)


def flaky(x: int) -> int:
    raise RuntimeError(f"cannot handle {x}")


async def main(db_path: str) -> None:
    async with TaskQueue(db_path) as queue:
        worker = Worker(db_path, concurrency=4)
        await worker.start()
        try:
            # chain: each result is the first argument of the next call.
            last = await queue.submit(chain(queue.signature(fetch, 1), queue.signature(count)))
            print("chain  fetch(1) | count        ->", (await queue.get_result(last)).value)

            # group: members in parallel; the result is the list of theirs, in order.
            doubled = await queue.submit(group(queue.signature(double, i) for i in range(5)))
            print("group  double(0..4)            ->", (await queue.get_result(doubled)).value)

            # chord: the callback runs once, after every member, with their results.
            summed = await queue.submit(
                chord([queue.signature(double, i) for i in range(10)], queue.signature(total))
            )
            print("chord  total(double(0..9))     ->", (await queue.get_result(summed)).value)

            # Nesting: a chain whose middle step is a group (a fan-out and back).
            nested = await queue.submit(
                queue.signature(fetch, 2)
                | group(queue.signature(count), queue.signature(total))
                | queue.signature(total)
            )
            print(
                "nested fetch | [count, total] | total ->", (await queue.get_result(nested)).value
            )

            # depends_on: wait for tasks enqueued earlier (by any process).
            a = await queue.enqueue(double, 20)
            b = await queue.with_options(depends_on=[a]).enqueue(double, 1)
            print("depends_on: b waits for a      ->", (await queue.get_result(b)).value)

            # A failed step cancels what waits for it, naming the failed parent.
            doomed = await queue.submit(queue.signature(flaky, 1) | queue.signature(double))
            result = await queue.get_result(doomed)
            assert result.status is TaskStatus.CANCELLED
            print("after a failure                ->", result.status.value, "-", result.error)
        finally:
            await worker.stop()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(main(os.path.join(folder, "compositions.db")))
