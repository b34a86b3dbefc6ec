"""Batch pipelines: one Pipeline template run per batch, on a local pool and on sitq workers.

A ``Pipeline`` template declares its input fields; a ``BatchPipeline`` splits
the inputs into batches (here with its own ``name_batch`` and ``book_batch``
generators) and runs one template instance per batch in parallel. The
template below does no work of its own, so each instance returns its inputs:
its batch of names and its chunk of the book.

Run it with::

    python examples/pipeline_batch.py
"""

import asyncio
import os
import tempfile

from sitq import TaskQueue, Worker
from sitq.pipeline import BatchPipeline, InstanceFailed, Pipeline
from sitq.pipeline.fields import FileInputDataField, InputDataField
from sitq.pipeline.signal import SoftSignal

# -- the pipeline template and its batch pipeline --------------------------------


class Simple(Pipeline):
    name = InputDataField(data_type=list, batch_size=5)
    book = FileInputDataField(required=True, chunk_size=1024)


class SimpleBatch(BatchPipeline):
    pipeline_template = Simple
    listen_to_signals = [SoftSignal("task_completed"), SoftSignal("task_failed")]

    def name_batch(self, data, batch_size):
        for i in range(0, len(data), batch_size or 1):
            yield data[i : i + batch_size]

    def book_batch(self, file_stream, chunk_size):
        while True:
            chunk = file_stream.read(int(chunk_size or 1024))
            if not chunk:
                break
            yield chunk


# -- watching it run: receivers of the pipeline's signals --------------------------


@SimpleBatch.connect("task_completed")
def report(event):
    names, chunk = event.result["name"], event.result["book"]
    print(f"  batch {event.index:2}: {len(names or [])} names, {len(chunk)} characters")


@SimpleBatch.connect("task_failed")
def alert(event):
    print(f"  batch {event.index:2} FAILED: {event.exception.error}")


def summary(where, outcomes):
    failed = sum(isinstance(o, InstanceFailed) for o in outcomes)
    print(
        f"{where}: {len(outcomes)} instances, {len(outcomes) - failed} completed, {failed} failed"
    )


async def on_workers(db_path, names, book):
    """The same batch pipeline with each instance a task on two sitq workers."""
    async with TaskQueue(db_path) as queue:
        workers = [Worker(db_path, concurrency=2), Worker(db_path, concurrency=2)]
        for worker in workers:
            await worker.start()  # usually `sitq worker` processes on other machines
        try:
            return await SimpleBatch(name=names, book=book).execute_async(queue)
        finally:
            for worker in workers:
                await worker.stop()


def main():
    with tempfile.TemporaryDirectory() as work:
        # 60 names (12 batches of 5) and a book of 12 chunks of up to 1024 characters.
        names = [f"item{i}" for i in range(60)]
        book = os.path.join(work, "book.csv")
        with open(book, "w", encoding="utf-8") as f:
            f.write("".join(f"{i},reader {i},chapter {i % 7}\n" for i in range(480)))

        print("=== Local process pool ===")
        simple_batch = SimpleBatch(name=names, book=book)
        pooled = simple_batch.execute(max_workers=2)
        summary("local pool", pooled)

        print("=== sitq workers ===")
        queued = asyncio.run(on_workers(os.path.join(work, "tasks.db"), names, book))
        summary("sitq workers", queued)

        print(f"same outcomes on both: {pooled == queued}")
    print("Pipeline batch example completed!")


if __name__ == "__main__":
    main()
