"""Registered tasks, a periodic task, a unique job and a limit, in one process.

A worker runs the schedule (every worker that imported it does; each due run
is enqueued once across all of them), a unique key keeps a second report from
being queued while one is waiting, and a limit keeps at most one "render" task
running at a time. In production, put the decorated functions in a module and
start `sitq worker --import that_module`.

Run it with::

    python examples/scheduled_tasks.py
"""

import asyncio
import os
import tempfile
import time

import sitq

DB = os.path.join(tempfile.mkdtemp(prefix="sitq-example-"), "tasks.db")
queue = sitq.TaskQueue(DB)
ticks: list[float] = []
running_renders = 0
most_renders_at_once = 0


@queue.task(max_retries=1)
async def send_report(day: str) -> str:
    """A registered task: stored by name, run from this code."""
    return f"report for {day} sent"


@queue.periodic(every=0.5, name="heartbeat")
def heartbeat() -> None:
    """Runs every half second while a worker runs (each due time once)."""
    ticks.append(time.monotonic())


@queue.task(limit_key="render")
async def render(page: int) -> int:
    """At most one at a time across all workers (see set_limit below)."""
    global running_renders, most_renders_at_once
    running_renders += 1
    most_renders_at_once = max(most_renders_at_once, running_renders)
    await asyncio.sleep(0.02)
    running_renders -= 1
    return page


async def main() -> None:
    async with queue:
        await queue.set_limit("render", max_running=1)
        worker = sitq.Worker(DB, concurrency=4)

        # A unique job: the second enqueue finds the first one waiting.
        first = await send_report.with_options(unique_key="report:monday").enqueue("monday")
        again = await send_report.with_options(unique_key="report:monday").enqueue("monday")
        print(f"unique key: same task {first == again}, second one created: {again.created}")

        pages = [await render.enqueue(page) for page in range(5)]
        await worker.start()  # this worker also runs the schedule
        try:
            print((await queue.get_result(first, timeout=30)).value)
            for task_id in pages:
                assert (await queue.get_result(task_id, timeout=30)).ok
            print(f"render: 5 pages, at most {most_renders_at_once} at once")
            deadline = time.monotonic() + 30
            while len(ticks) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # waiting for the schedule to fire
            print(f"heartbeat ran {len(ticks)} times")
            (schedule,) = await queue.schedules()
            print(f"schedule {schedule.name!r}: {schedule.spec}")
        finally:
            await worker.stop()
    for name in os.listdir(os.path.dirname(DB)):
        os.remove(os.path.join(os.path.dirname(DB), name))
    os.rmdir(os.path.dirname(DB))
    print("Scheduled tasks example completed!")


if __name__ == "__main__":
    asyncio.run(main())
