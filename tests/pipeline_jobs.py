"""Pipeline templates the pipeline tests run; importable by `sitq worker`
subprocesses (the tests put this folder on their PYTHONPATH).

Run as a script, ``python pipeline_jobs.py rss FILE`` streams FILE through a
batch pipeline in 1 MB chunks and prints the parent's peak RSS before and
after as JSON (a fresh process, so the peak is this run's own).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

from sitq.pipeline import BatchPipeline, Pipeline
from sitq.pipeline.fields import FileInputDataField, InputDataField
from sitq.pipeline.signal import SoftSignal

ALL_SIGNALS = ["task_completed", "task_failed", "batch_started", "batch_finished"]


class Words(Pipeline):
    """Two batched lists and one value given whole; a name "boom" makes it fail."""

    names = InputDataField(data_type=list, batch_size=5)
    tags = InputDataField(data_type=list, batch_size=2)
    label = InputDataField(data_type=str, default="run")

    def process(self) -> dict[str, object]:
        if "boom" in (self.names or []):
            raise ValueError(f"boom in batch {self.batch_index}")
        return {
            "batch": self.batch_index,
            "names": self.names,
            "tags": self.tags,
            "label": self.label,
        }


class WordsBatch(BatchPipeline):
    pipeline_template = Words
    listen_to_signals = [SoftSignal(name) for name in ALL_SIGNALS]


class AsyncWords(Words):
    """Words with a coroutine ``process``."""

    async def process(self) -> dict[str, object]:  # type: ignore[override]
        return Words.process(self)


class AsyncWordsBatch(BatchPipeline):
    pipeline_template = AsyncWords


class Pid(Pipeline):
    """Which process ran each item."""

    items = InputDataField(data_type=list, batch_size=1)

    def process(self) -> int:
        return os.getpid()


class PidBatch(BatchPipeline):
    pipeline_template = Pid


class Crash(Pipeline):
    """Item "die" kills its pool process; the others return their item."""

    items = InputDataField(data_type=list, batch_size=1)

    def process(self) -> str:
        (item,) = self.items
        if item == "die":
            os._exit(3)
        return item


class CrashBatch(BatchPipeline):
    pipeline_template = Crash


class SlowCrash(Pipeline):
    """Crash, but the others take a moment: the pool holds several when "die" dies."""

    items = InputDataField(data_type=list, batch_size=1)

    def process(self) -> str:
        (item,) = self.items
        if item == "die":
            os._exit(3)
        time.sleep(0.05)  # stands for work; nothing waits on it
        return item


class SlowCrashBatch(BatchPipeline):
    pipeline_template = SlowCrash


class Hang(Pipeline):
    """Item "hang" never finishes (a stuck instance); the others return their item."""

    items = InputDataField(data_type=list, batch_size=1)

    def process(self) -> str:
        (item,) = self.items
        if item == "hang":
            time.sleep(3600)
        return item


class HangBatch(BatchPipeline):
    pipeline_template = Hang


class ChunkLength(Pipeline):
    """The length of its chunk of a file."""

    book = FileInputDataField(required=True, chunk_size=1 << 20)

    def process(self) -> int:
        return len(self.book)


class ChunkLengthBatch(BatchPipeline):
    pipeline_template = ChunkLength


def peak_rss_kb() -> int:
    """This process's peak resident set size so far, in KiB: VmHWM, not
    ru_maxrss, which Linux carries over an exec from the forking parent (a
    pytest process grown past 500 MB hid the whole measurement)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_probe(path: str) -> None:
    batch = ChunkLengthBatch(book=path)
    before = peak_rss_kb()
    start = time.monotonic()
    outcomes = batch.execute(max_workers=2)
    elapsed = time.monotonic() - start
    after = peak_rss_kb()
    with open(path) as f:  # the control: reading it whole must show in the peak
        whole = f.read()
    control = peak_rss_kb()
    report = {
        "before_kb": before,
        "after_kb": after,
        "control_kb": control,
        "chunks": len(outcomes),
        "total": sum(outcomes),
        "whole": len(whole),
        "seconds": elapsed,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    if sys.argv[1:2] == ["rss"]:
        rss_probe(sys.argv[2])
    else:
        sys.exit(f"usage: {sys.argv[0]} rss FILE")
