"""sitq progress: a task says how far it has come, and the producer follows it live.

Inside a task, ``sitq.current_task()`` reports progress (``report_progress``) and
says when someone asked to cancel it (``cancel_requested``). Any process using
the same database follows the reports with ``queue.watch(...)`` or reads the
latest with ``queue.progress(...)``. Here a worker runs in this process; with
``sitq worker`` processes (on this host or others) it works the same way.

Run it with::

    python examples/progress.py
"""

import asyncio
import os
import tempfile
import time

import sitq


def resize_photos(names: list[str]) -> int:
    """A plain function (the worker runs it in a thread) that reports each photo."""
    task = sitq.current_task()  # the running task (None outside a task)
    assert task is not None
    for done, name in enumerate(names, 1):
        time.sleep(0.1)  # pretend to resize the photo
        # Cheap: only the latest report is kept; the worker stores it twice a second.
        task.report_progress(done, len(names), f"resized {name}")
    return len(names)


def crawl(site: str) -> int:
    """Runs until cancelled, with no total known; stops at a safe point when asked."""
    task = sitq.current_task()
    assert task is not None
    pages = 0
    while not task.cancel_requested:  # queue.cancel() or `sitq cancel` sets it
        time.sleep(0.05)  # pretend to fetch a page
        pages += 1
        task.report_progress(pages, message=f"{site}/page/{pages}")
    return pages


def bar(progress: sitq.Progress) -> str:
    """``[#####...............] 5/20`` for a report with a total."""
    if progress.fraction is None:
        return f"{progress.done} done"
    filled = round(20 * progress.fraction)
    return f"[{'#' * filled}{'.' * (20 - filled)}] {progress.done}/{progress.total}"


async def main(db_path: str) -> None:
    async with sitq.TaskQueue(db_path) as queue:
        worker = sitq.Worker(db_path, concurrency=2)
        await worker.start()
        try:
            # 1. Follow a task to its end: watch() yields its reports as they are
            #    stored, then its finish (with the Result), and the loop ends.
            photos = [f"photo-{i:02d}.jpg" for i in range(1, 21)]
            task_id = await queue.enqueue(resize_photos, photos)
            print(f"Resizing {len(photos)} photos in the background:")
            async for event in queue.watch([task_id]):
                if event.kind == "progress":
                    assert event.progress is not None
                    print(f"  {bar(event.progress)}  {event.progress.message}")
                else:
                    assert event.status is not None and event.result is not None
                    print(f"  finished: {event.status.value}, {event.result.value} photos resized")
            # The last report stays with the task: any process can read it later.
            last = await queue.progress(task_id)
            assert last is not None
            print(f"Stored with the task: {last.done}/{last.total} ({last.message})")

            # 2. Cancel a task that watches cancel_requested, once it has done enough.
            crawl_id = await queue.enqueue(crawl, "example.org")
            print("Crawling until 5 pages are done, then cancelling:")
            asked = False
            async for event in queue.watch([crawl_id]):
                if event.kind == "progress":
                    report = event.progress
                    assert report is not None
                    print(f"  {report.done} pages crawled, the last {report.message}")
                    if report.done >= 5 and not asked:
                        outcome = await queue.request_cancel(crawl_id)
                        print(f"  cancel: {outcome.value} (its worker tells the task)")
                        asked = True
                else:
                    assert event.status is not None
                    print(f"  finished: {event.status.value}")
        finally:
            # Graceful stop: finish what runs, claim nothing new.
            await worker.stop()

    print("Progress example completed!")


if __name__ == "__main__":
    # A throwaway database, so the example leaves no files behind. Real code would
    # use a fixed path such as "tasks.db" (or $SITQ_DB; the default is sitq.db).
    with tempfile.TemporaryDirectory(prefix="sitq-progress-") as tmp:
        asyncio.run(main(os.path.join(tmp, "progress.db")))
