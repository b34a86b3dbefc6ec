"""Periodic tasks: cron expressions and fixed intervals, run once per due time
across every worker and host.

``@queue.periodic(cron="*/5 * * * *", tz="Europe/Paris")`` or
``queue.schedule(fn, every=60)`` registers a :class:`Schedule` in this process.
Every worker that imported it runs a :class:`Scheduler`, which enqueues each
due run through ``Backend.advance_schedule``: recording the run and inserting
its task happen in one transaction, guarded by the schedule's last recorded
due time, so however many workers race for a due time, exactly one enqueues it.

Due times do not depend on when a worker started: interval schedules fall on
multiples of the interval since the Unix epoch, cron schedules on the cron
times in their time zone. After downtime, ``catch_up`` decides what happens to
the runs that were missed:

- ``"latest"`` (default): run once, for the most recent missed time;
- ``"all"``: run every missed time, oldest first (at most ``MAX_CATCH_UP``);
- ``"skip"``: run none of them, unless the latest is within ``misfire_grace``
  seconds (a worker merely a little late).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from sitq.backends.base import ScheduleRecord
from sitq.errors import ConfigurationError
from sitq.task import TaskOptions

if TYPE_CHECKING:
    from sitq.queue import TaskQueue

logger = logging.getLogger("sitq.schedules")

CatchUp = Literal["latest", "all", "skip"]
CATCH_UP_POLICIES = ("latest", "all", "skip")
#: The most missed runs one schedule enqueues in one go with catch_up="all".
MAX_CATCH_UP = 1000
#: The longest the scheduler sleeps, so it notices other workers' progress.
MAX_TICK = 1.0

_schedules: dict[str, Schedule] = {}


@dataclass(frozen=True)
class Schedule:
    """One periodic task: what to call, and when."""

    name: str
    fn: Callable[..., Any]
    cron: str | None = None
    every: float | None = None
    tz: str = "UTC"
    catch_up: CatchUp = "latest"
    misfire_grace: float = 60.0
    options: TaskOptions = field(default_factory=TaskOptions)
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cron is not None and not isinstance(self.cron, str):
            raise ConfigurationError(
                f"schedule {self.name!r}: when to run is a cron string, or every=SECONDS; "
                f"got {self.cron!r} as the cron expression (for an interval write "
                f"every={_seconds_hint(self.cron)})"
            )
        if isinstance(self.every, timedelta):  # frozen: set the normalized value once
            object.__setattr__(self, "every", self.every.total_seconds())
        if (self.cron is None) == (self.every is None):
            raise ConfigurationError(
                f"schedule {self.name!r}: give exactly one of cron='* * * * *' or every=SECONDS"
            )
        if self.every is not None and (
            isinstance(self.every, bool)
            or not isinstance(self.every, (int, float))
            or not math.isfinite(self.every)
            or not self.every > 0
        ):
            raise ConfigurationError(
                f"schedule {self.name!r}: every must be a finite number of seconds > 0 (or a "
                f"timedelta), got {self.every!r}"
            )
        zone = self.zone  # validates tz
        if self.cron is not None:
            try:
                next(CronSim(self.cron, datetime.now(zone)))
            except (CronSimError, StopIteration, TypeError) as exc:
                raise ConfigurationError(
                    f"schedule {self.name!r}: {self.cron!r} is not a cron expression "
                    f"({exc}); use five fields: minute hour day-of-month month day-of-week"
                ) from None
        if self.options.depends_on:
            raise ConfigurationError(
                f"schedule {self.name!r}: depends_on cannot be set on a schedule (each run "
                "would wait for the same tasks, finished after the first run); to run "
                "work after a scheduled task, submit a chain from inside it"
            )
        if self.catch_up not in CATCH_UP_POLICIES:
            raise ConfigurationError(
                f"schedule {self.name!r}: catch_up must be one of "
                f"{', '.join(CATCH_UP_POLICIES)}, got {self.catch_up!r}"
            )

    @property
    def zone(self) -> ZoneInfo:
        """The time zone cron times are read in."""
        try:
            return ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ConfigurationError(
                f"schedule {self.name!r}: unknown time zone {self.tz!r}; use an IANA name "
                "such as 'UTC' or 'Europe/Paris'"
            ) from None

    @property
    def spec(self) -> str:
        """How `sitq status` shows when it runs."""
        if self.cron is not None:
            return f"cron {self.cron} ({self.tz})"
        # Exact (``has_run`` reads the interval back from it), short when it can be.
        short = f"{self.every:g}"
        return f"every {short if float(short) == self.every else repr(self.every)}s"

    def next_after(self, moment: float) -> float:
        """The first due time strictly after ``moment`` (Unix seconds)."""
        if self.every is not None:
            return (math.floor(moment / self.every) + 1) * self.every
        assert self.cron is not None
        start = datetime.fromtimestamp(moment, self.zone)
        return next(CronSim(self.cron, start)).timestamp()

    def due_between(self, after: float, until: float, limit: int) -> list[float]:
        """Due times in (after, until], oldest first: the newest ``limit`` of them."""
        first = self.next_after(after)
        if first > until:
            return []
        if self.every is not None:
            last_k = math.floor(until / self.every)
            first_k = max(round(first / self.every), last_k - limit + 1)
            return [k * self.every for k in range(first_k, last_k + 1)]
        # Walk back from `until`, so a long downtime costs at most `limit` steps.
        assert self.cron is not None
        newest_first: list[float] = []
        walker = CronSim(self.cron, datetime.fromtimestamp(until + 1.0, self.zone), reverse=True)
        for moment in walker:
            stamp = moment.timestamp()
            if stamp <= after or len(newest_first) >= limit:
                break
            if stamp <= until:
                newest_first.append(stamp)
        return newest_first[::-1]


def _seconds_hint(value: Any) -> str:
    """``value`` as an every= argument, for a message."""
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    return "SECONDS"


def has_run(record: ScheduleRecord) -> bool:
    """Whether the schedule ``record`` describes has reached a due time (run or
    skipped) rather than only been seen.

    A schedule's first sighting records the moment a worker first saw it, to
    start from; every later record is a due time: a multiple of the interval, or
    a whole minute for cron. So a recorded time that is not a due time means the
    schedule never ran. Specs this sitq does not write count as run.
    """
    at = record.last_run_at
    if record.spec.startswith("cron "):
        return float(at).is_integer() and int(at) % 60 == 0
    if record.spec.startswith("every ") and record.spec.endswith("s"):
        try:
            every = float(record.spec[len("every ") : -1])
        except ValueError:
            return True
        return every > 0 and round(at / every) * every == at
    return True


def add(schedule: Schedule) -> Schedule:
    """Register ``schedule`` in this process (workers run what is registered)."""
    existing = _schedules.get(schedule.name)
    if existing is not None and existing != schedule:
        raise ConfigurationError(
            f"a different schedule is already named {schedule.name!r}: give one a name=..."
        )
    _schedules[schedule.name] = schedule
    return schedule


def remove(name: str) -> bool:
    """Forget a schedule in this process; returns whether it was registered."""
    return _schedules.pop(name, None) is not None


def registered() -> list[Schedule]:
    """The schedules registered in this process, by name."""
    return [_schedules[name] for name in sorted(_schedules)]


class Scheduler:
    """Enqueues the due runs of ``schedules`` through ``queue`` (run by workers)."""

    def __init__(self, queue: TaskQueue, schedules: Sequence[Schedule]) -> None:
        self.queue = queue
        self.schedules = list(schedules)
        self.enqueued = 0

    async def tick(self) -> float:
        """Enqueue what is due now; return the seconds until the next due time."""
        queue = self.queue
        known = {record.name: record for record in await queue.schedules()}
        now = queue.now()
        wait = MAX_TICK
        for schedule in self.schedules:
            record = known.get(schedule.name)
            try:
                if record is None:
                    # First sighting: runs start from now, nothing is backfilled.
                    await queue.advance_schedule(
                        schedule, now, schedule.next_after(now), first=True
                    )
                    last = now
                else:
                    last = await self._run_due(schedule, record.last_run_at, now)
            except Exception:
                logger.exception("schedule %s: could not enqueue its due runs", schedule.name)
                continue
            wait = min(wait, max(0.0, schedule.next_after(last) - queue.now()))
        return wait

    async def _run_due(self, schedule: Schedule, last: float, now: float) -> float:
        limit = MAX_CATCH_UP if schedule.catch_up == "all" else 1
        due_times = schedule.due_between(last, now, limit)
        if not due_times:
            return last
        if schedule.catch_up == "skip" and now - due_times[-1] > schedule.misfire_grace:
            await self.queue.advance_schedule(schedule, due_times[-1], schedule.next_after(now))
            logger.info("schedule %s: skipped missed runs up to %s", schedule.name, due_times[-1])
            return due_times[-1]
        for due in due_times:
            # The unique key names the run, so `sitq inspect` shows which one it is.
            options = schedule.options.merged(unique_key=f"schedule:{schedule.name}@{due:.3f}")
            task_id = await self.queue.advance_schedule(
                schedule, due, schedule.next_after(due), run_with=options
            )
            if task_id is not None:
                self.enqueued += 1
                logger.info("schedule %s: enqueued task %s for %s", schedule.name, task_id, due)
        return due_times[-1]

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; errors are logged, never raised."""
        while not stop.is_set():
            try:
                wait = await self.tick()
            except Exception:
                logger.exception("scheduler tick failed; trying again")
                wait = MAX_TICK
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.01, wait))
