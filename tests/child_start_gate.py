"""Holds the start of each process-pool child until a file exists.

`sitq worker --pool process --import child_start_gate` with
``$SITQ_TEST_CHILD_GATE`` naming a file: every child the worker spawns imports
this module before it takes its first task, and waits here until that file
exists (at most a minute). A task sent to such a child is held by the worker
but has not begun (tests/test_progress.py). The worker's own process imports
it too and is never held: only a multiprocessing child waits.
"""

from __future__ import annotations

import multiprocessing
import os
import time

#: The longest a child waits for the gate (bounds a test that forgets to open it).
LONGEST_WAIT = 60.0

GATE = os.environ.get("SITQ_TEST_CHILD_GATE")

if GATE and multiprocessing.parent_process() is not None:
    deadline = time.monotonic() + LONGEST_WAIT
    while not os.path.exists(GATE) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling interval, not synchronization
