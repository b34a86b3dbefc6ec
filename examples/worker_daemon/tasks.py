"""Task functions shared by the producer and the worker.

Both sides import this module: the producer to enqueue the functions, the worker
(``sitq worker --import tasks``) so the stored calls resolve to the same code.
"""

import asyncio
import hashlib


async def slow_square(n: int) -> int:
    """A coroutine task: the worker runs it on its event loop."""
    await asyncio.sleep(0.05)  # stands in for a network call
    return n * n


def fingerprint(text: str) -> dict:
    """A plain function: the worker runs it in a thread (``--pool auto``)."""
    return {
        "words": len(text.split()),
        "sha256": hashlib.sha256(text.encode()).hexdigest()[:12],
    }
