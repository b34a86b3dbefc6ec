"""``/metrics``: the overview's figures in the Prometheus text format (0.0.4).

Written by hand rather than with ``prometheus_client``: a few gauges rendered
from data the dashboard already keeps need no registry, and the extra stays
three packages. The task counts are the dashboard's sampled counts (see
``history``): a scrape reuses the latest sample while it is fresh, so scraping
adds no count of its own, and counting never takes more than a tenth of the
time however often it is scraped. The finished-per-minute figures are a real
count of finish times (by whole seconds) read with those counts, not a rate
extrapolated from samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sitq.dashboard.history import CountHistory
from sitq.overview import STATUSES, WORKER_STALE_AFTER
from sitq.queue import TaskQueue

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Series = list[tuple[dict[str, str], float]]


def _label(value: str) -> str:
    """A label value escaped as the text format requires."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _family(name: str, help_text: str, series: Series) -> Iterable[str]:
    yield f"# HELP {name} {help_text}"
    yield f"# TYPE {name} gauge"
    for labels, value in series:
        shown = ",".join(f'{key}="{_label(val)}"' for key, val in labels.items())
        yield f"{name}{{{shown}}} {_number(value)}" if shown else f"{name} {_number(value)}"


async def exposition(queue: TaskQueue, history: CountHistory, clock: float) -> str:
    """The metrics page: per queue its tasks by status, depth, oldest wait,
    throughput, failed share and retries; workers alive and dead; running tasks."""
    sample = await history.latest()
    # Not counted again: the task counts are the sampled ones.
    view = await queue.overview(failures=0, counts=False)
    oldest = {n: q.oldest_wait for n, q in view.queues.items() if q.oldest_wait is not None}
    names = sorted(set(sample.by_queue) | set(oldest))
    rates = history.rates()
    dead = sum(1 for w in view.workers if w.state == "dead")
    running = dict.fromkeys(names, 0)
    for task in view.running:
        running[task.queue] = running.get(task.queue, 0) + 1

    def per_queue(values: Mapping[str, float | None]) -> Series:
        return [({"queue": n}, v) for n, v in sorted(values.items()) if v is not None]

    counts = {n: sample.by_queue.get(n, {}) for n in names}
    lines = [
        *_family(
            "sitq_queue_tasks",
            "Tasks per queue and status, as last counted.",
            [({"queue": n, "status": s}, counts[n].get(s, 0)) for n in names for s in STATUSES],
        ),
        *_family(
            "sitq_queue_depth",
            "Tasks waiting in the queue (queued, due or delayed), as last counted.",
            per_queue({n: counts[n].get("queued", 0) for n in names}),
        ),
        *_family(
            "sitq_queue_oldest_wait_seconds",
            "How long the queue's longest-waiting due task has waited.",
            per_queue(dict(oldest)),
        ),
        *_family(
            "sitq_queue_finished_per_minute",
            "Tasks finished (succeeded, failed, cancelled) in the 60 s before the counts "
            "were taken, counted from their finish times (tasks already pruned excepted).",
            per_queue({n: rate[0] for n, rate in rates.items()}),
        ),
        *_family(
            "sitq_queue_failed_ratio",
            "The failed share of the tasks finished in the 60 s before the counts were taken.",
            per_queue({n: rate[1] for n, rate in rates.items()}),
        ),
        *_family(
            "sitq_queue_failed_tasks",
            "Failed tasks kept (until their retention ends), as last counted.",
            per_queue({n: counts[n].get("failed", 0) for n in names}),
        ),
        *_family(
            "sitq_queue_retrying_tasks",
            "Queued tasks that ran before: waiting for a retry after a failure or a lost worker.",
            per_queue({n: sample.retrying.get(n, 0) for n in names}),
        ),
        *_family(
            "sitq_running_tasks",
            "Tasks running now, per queue (read at each scrape).",
            per_queue(running),
        ),
        *_family(
            "sitq_workers",
            f"Workers by state: alive, or dead (no heartbeat for {WORKER_STALE_AFTER:.0f} s).",
            [({"state": "alive"}, view.workers_alive), ({"state": "dead"}, dead)],
        ),
        *_family(
            "sitq_counts_age_seconds",
            "How old the task counts are (they are sampled, at most a tenth of the time).",
            [({}, max(0.0, clock - sample.at))],
        ),
    ]
    return "\n".join(lines) + "\n"
