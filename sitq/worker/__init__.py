"""The worker side of sitq: :class:`Worker` claims tasks, runs them and reports
their outcomes.

Modules, by concern:

- ``worker``: the Worker class and its lifecycle (start, run, stop, restart)
- ``claiming``: the claim loop with adaptive prefetch, and the heartbeat
- ``execution``: slots and runs: on the loop, a thread or a child; outcomes decided
- ``outcomes``: the outcome writer (group commits, retried while the lease holds)
- ``runs``: the state of one held task, timeouts, failure logs and signals
- ``thread_slots``: the task threads behind plain functions
- ``process_pool``: the child-process pool behind ``pool="process"``
- ``calls``: one call of a task function, as a tagged reply (threads, children)
"""

from sitq.worker.claiming import MAX_PREFETCH, PREFETCH_HORIZON
from sitq.worker.worker import POOLS, Worker

__all__ = ["MAX_PREFETCH", "POOLS", "PREFETCH_HORIZON", "Worker"]
