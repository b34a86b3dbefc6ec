"""Registered and periodic tasks, imported by `sitq worker --import registered_jobs`
in tests/test_schedules.py. The queue object only registers; workers find the
tasks by name."""

from __future__ import annotations

import os

from jobs import append_line

from sitq import TaskQueue

queue = TaskQueue(os.environ.get("SITQ_DB", "sitq.db"))


@queue.task(name="greet", max_retries=1)
def greet(name: str, punctuation: str = "!") -> str:
    return f"hello {name}{punctuation}"


@queue.task
async def shout(word: str) -> str:
    return word.upper()


if os.environ.get("SITQ_TEST_PERIODIC_LOG"):

    @queue.periodic(every=1.0, name="every-second", catch_up="all")
    def tick() -> None:
        append_line(os.environ["SITQ_TEST_PERIODIC_LOG"], f"tick {os.getpid()}")
