"""Enqueue 20 tasks for a running ``sitq worker`` and wait for their results.

Uses ``$SITQ_DB`` if set, else ``./sitq.db`` (the same default as the ``sitq``
command). Exits 0 if every task succeeded, 1 otherwise. See README.md.
"""

import sys
import time

import tasks

from sitq import SyncTaskQueue

#: How long to wait for all results before giving up (is a worker running?).
DEADLINE_SECONDS = 60.0


def main() -> int:
    started = time.monotonic()
    with SyncTaskQueue() as queue:  # no argument: $SITQ_DB, else sitq.db
        print(f"enqueueing into {queue.describe()}")
        task_ids = [queue.enqueue(tasks.slow_square, n) for n in range(10)]
        task_ids += queue.enqueue_many(
            tasks.fingerprint, [f"document number {n} " * (n + 1) for n in range(10)]
        )
        print(f"enqueued {len(task_ids)} tasks; waiting for a worker to run them...")

        deadline = time.monotonic() + DEADLINE_SECONDS
        results = {}
        for task_id in task_ids:
            remaining = max(0.0, deadline - time.monotonic())
            result = queue.get_result(task_id, timeout=remaining)
            if result is not None:
                results[task_id] = result

    succeeded = [r for r in results.values() if r.ok]
    failed = [r for r in results.values() if not r.ok]
    unfinished = len(task_ids) - len(results)
    elapsed = time.monotonic() - started
    for result in failed:
        print(f"  task {result.task_id} {result.status.value}: {result.error}")
    squares = [results[i].value for i in task_ids[:10] if i in results and results[i].ok]
    print(f"squares: {squares}")
    print(
        f"summary: {len(succeeded)} succeeded, {len(failed)} failed, "
        f"{unfinished} unfinished, in {elapsed:.1f}s"
    )
    if len(succeeded) == len(task_ids):
        print("all tasks succeeded")
        return 0
    if unfinished:
        print(
            f"some tasks did not finish within {DEADLINE_SECONDS:g}s: "
            "is `sitq worker --import tasks` running?"
        )
    return 1


if __name__ == "__main__":
    sys.exit(main())
