"""What a task is: its status, its enqueue options, and its Result."""

from __future__ import annotations

import enum
import inspect
import random
import types
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from sitq import checks
from sitq.backends.base import text_task_ids
from sitq.errors import ConfigurationError, InvalidDependency, InvalidTask, TaskFailed


class TaskStatus(str, enum.Enum):
    """Where a task is in its life.

    A task waiting for its ``eta`` or for its next retry is ``QUEUED``.
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True once the task will not run again on its own."""
        return self in FINISHED_STATUSES


FINISHED_STATUSES = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})

#: One call of a function: its positional and keyword arguments.
Call = tuple[tuple[Any, ...], dict[str, Any]]

DEFAULT_RETRY_BACKOFF = 1.0
"""Seconds before the first retry; each further retry doubles it (with jitter)."""
MAX_RETRY_DELAY = 3600.0
#: The most retries a task may have (its attempt count must fit the database's int).
MAX_RETRIES = checks.INT_MAX - 1


@dataclass(frozen=True)
class TaskOptions:
    """How a task is enqueued. Every field has a documented default.

    - ``queue``: the queue's name; workers claim from the queues they serve.
    - ``priority``: higher runs first among ready tasks of a queue.
    - ``delay``: seconds from now before the task may start (>= 0).
    - ``eta``: a timezone-aware datetime before which the task may not start.
    - ``max_retries``: how many times a task that raises is run again.
    - ``retry_backoff``: seconds before the first retry, doubled per retry, jittered.
    - ``timeout``: seconds a single run may take before it is stopped and failed.
    - ``unique_key``: while a task with this key is queued or running, enqueueing
      another with it returns that task's id instead of adding one (see TaskId).
    - ``result_ttl``: seconds the finished task's Result is kept (None: backend default).
    - ``limit_key``: the key of a limit set with ``TaskQueue.set_limit`` (at most N
      running at once, or N starts per period, across every worker); None: unlimited.
    - ``depends_on``: ids of tasks this one waits for: it stays queued until they
      have all finished, and becomes due in the transaction that finishes the last.
    - ``on_parent_failure``: when a parent fails or is cancelled, "cancel" (the
      default: this task ends cancelled, naming that parent, and so do the tasks
      waiting for it) or "run" (it runs anyway once every parent has finished).
    """

    queue: str = "default"
    priority: int = 0
    delay: float | None = None
    eta: datetime | None = None
    max_retries: int = 0
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    timeout: float | None = None
    unique_key: str | None = None
    result_ttl: float | None = None
    limit_key: str | None = None
    depends_on: tuple[str, ...] = ()
    on_parent_failure: str = "cancel"

    def __post_init__(self) -> None:
        object.__setattr__(self, "depends_on", parent_ids(self.depends_on))
        if self.on_parent_failure not in ("cancel", "run"):
            raise ConfigurationError(
                f'on_parent_failure must be "cancel" or "run", got {self.on_parent_failure!r}'
            )
        checks.name("queue", self.queue)
        checks.integer("priority", self.priority)
        if self.delay is not None and self.eta is not None:
            raise ConfigurationError("give either delay or eta, not both")
        if self.delay is not None:
            checks.seconds(
                "delay", self.delay, hint="; use delay=0 (or omit it) to run as soon as possible"
            )
        if self.eta is not None:
            if not isinstance(self.eta, datetime):
                raise ConfigurationError(f"eta must be a datetime, got {self.eta!r}")
            if self.eta.tzinfo is None or self.eta.utcoffset() is None:
                raise ConfigurationError(
                    f"eta {self.eta.isoformat()} is naive: give a timezone-aware datetime, "
                    "e.g. datetime.now(timezone.utc) + timedelta(minutes=5)"
                )
        checks.integer("max_retries", self.max_retries, minimum=0, maximum=MAX_RETRIES)
        checks.seconds("retry_backoff", self.retry_backoff)
        if self.timeout is not None:
            checks.seconds("timeout", self.timeout, positive=True, hint="; use None for no limit")
        for name in ("unique_key", "limit_key"):
            value = getattr(self, name)
            if value is not None:
                checks.name(name, value)
        if self.result_ttl is not None:
            checks.seconds(
                "result_ttl", self.result_ttl, hint="; use None for the backend's default"
            )

    def merged(self, **changes: Any) -> TaskOptions:
        """A copy with ``changes`` applied (validated); unknown names are an error."""
        unknown = set(changes) - set(self.__dataclass_fields__)
        if unknown:
            known = ", ".join(sorted(self.__dataclass_fields__))
            raise ConfigurationError(
                f"unknown task option(s) {', '.join(sorted(unknown))}; known options: {known}"
            )
        return replace(self, **changes)

    def available_at(self, now: float) -> float:
        """The unix time from which the task may start."""
        if self.eta is not None:
            return self.eta.timestamp()
        return now + (self.delay or 0.0)


def parent_ids(value: Any) -> tuple[str, ...]:
    """``depends_on`` as a tuple of distinct ids: one id or an iterable of ids."""
    ids = (value,) if isinstance(value, str) else value
    try:
        ids = tuple(ids)
    except TypeError:
        raise InvalidDependency(
            f"depends_on takes task ids (as enqueue returns them), got {type(value).__name__} "
            f"{value!r:.80}"
        ) from None
    for task_id in ids:
        if not isinstance(task_id, str) or not task_id:
            raise InvalidDependency(
                f"depends_on takes task ids (non-empty str, as enqueue returns them), got "
                f"{type(task_id).__name__} {task_id!r:.80}"
            )
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise InvalidDependency(
            f"depends_on names task {', '.join(twice)} more than once: name each parent once"
        )
    return ids


class TaskId(str):
    """The id an enqueue returns (a str). ``created`` is False when a task with
    the same ``unique_key`` was already queued or running and this is its id."""

    created: bool = True

    @classmethod
    def existing(cls, task_id: str) -> TaskId:
        """The id of a task that was already there."""
        value = cls(task_id)
        value.created = False
        return value


def retry_delay(base: float, attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): exponential, jittered.

    Jitter spreads retries of tasks that failed together (e.g. on one outage) so
    they do not all come back at once; the delay stays within [base/2, base] * 2**(n-1).
    """
    if base <= 0:
        return 0.0
    # `2 ** int` is typed Any (a negative exponent gives a float); attempt >= 1 here.
    ceiling: float = min(base * 2 ** (attempt - 1), MAX_RETRY_DELAY)
    return ceiling * random.uniform(0.5, 1.0)


def new_task_id() -> str:
    """A text task id (see :func:`new_task_ids`)."""
    return new_task_ids(1)[0]


#: ``count`` random text ids that sort by time. Which ids a task gets is its
#: backend's choice (``Backend.task_ids``); these are the default, and what a
#: backend that stores ids as text accepts.
new_task_ids = text_task_ids


def to_datetime(value: float | None) -> datetime | None:
    """A stored timestamp (seconds since the epoch) as an aware UTC datetime."""
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)


# The old private name, still imported by sitq.queue: remove once it imports to_datetime.
_to_datetime = to_datetime


@dataclass
class Result:
    """The outcome of a finished task (succeeded, failed or cancelled).

    ``value`` is the deserialized return value (None unless succeeded); ``error``
    and ``traceback`` describe a failure. Times are timezone-aware UTC datetimes.
    """

    task_id: str
    status: TaskStatus
    value: Any = None
    error: str | None = None
    traceback: str | None = None
    attempts: int = 0
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker_id: str | None = None
    func_name: str | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True if the task succeeded."""
        return self.status is TaskStatus.SUCCEEDED

    def unwrap(self) -> Any:
        """The value if the task succeeded; otherwise raise :class:`TaskFailed`."""
        if self.ok:
            return self.value
        raise TaskFailed(self.task_id, self.error, self.traceback, status=self.status.value)


#: The keywords that are enqueue options: passed to enqueue(), they go to the function.
OPTION_NAMES = frozenset(TaskOptions.__dataclass_fields__)


def check_arguments(fn: Callable[..., Any], calls: Sequence[Call], leading: int = 0) -> None:
    """Refuse a call that ``fn`` could never accept, as Python would refuse it.

    A missing required argument, one too many, or an unknown keyword would only
    fail in the worker, after a round trip through the queue: refused here, with
    Python's own reason. ``leading`` counts the arguments the worker puts first (a
    chain step's parent result). Checked for plain functions and bound methods,
    from their code in a few comparisons (an enqueue_many item costs a length and
    two compares; keywords cost a cached signature's bind). Other callables
    (builtins, partials, objects with ``__call__``, tasks sent by name) and
    functions that declare their own ``__signature__`` are left to the worker."""
    target: Any = fn
    bound = 0
    if type(fn) is types.MethodType:
        target, bound = fn.__func__, 1
    if type(target) is not types.FunctionType or "__signature__" in target.__dict__:
        return
    code = target.__code__
    most = None if code.co_flags & inspect.CO_VARARGS else code.co_argcount - bound
    defaults = target.__defaults__
    least = code.co_argcount - bound - (len(defaults) if defaults else 0)
    keyword_only = code.co_kwonlyargcount > len(target.__kwdefaults__ or ())
    for index, (args, kwargs) in enumerate(calls):
        given = len(args) + leading
        if not (kwargs or keyword_only or given < least or (most is not None and given > most)):
            continue
        problem = _bind_problem(target, leading + bound, args, kwargs)
        if problem is not None:
            _refuse_call(fn, index, len(calls), leading, problem)


#: Signatures read for keyword checks, by code object (a def's every closure shares it).
_signatures: weakref.WeakKeyDictionary[Any, inspect.Signature] = weakref.WeakKeyDictionary()


def _bind_problem(
    function: types.FunctionType, leading: int, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str | None:
    """Python's reason ``function(*leading, *args, **kwargs)`` cannot bind, or None
    (``leading`` placeholders stand for a method's self and a parent's result)."""
    code = function.__code__
    signature = _signatures.get(code)
    if signature is None:
        signature = _signatures[code] = inspect.signature(function, follow_wrapped=False)
    try:
        signature.bind(*((None,) * leading), *args, **kwargs)
    except TypeError as exc:
        return str(exc)
    return None


def _refuse_call(
    fn: Callable[..., Any],
    index: int,
    count: int,
    leading: int,
    problem: str,
) -> None:
    """Raise InvalidTask naming the function, its signature, the item and ``problem``."""
    shown = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
    where = f" (item {index} of enqueue_many)" if count > 1 else ""
    hint = "pass the arguments it takes"
    if leading:
        hint += ", not counting the parent's result, which the worker passes first"
    elif count > 1 and problem.startswith("too many positional"):
        hint += (
            "; an item that is a tuple is the positional arguments: wrap a tuple "
            "meant as one argument as ((a, b),)"
        )
    signature = inspect.signature(fn, follow_wrapped=False)
    bare = signature.replace(
        parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
        return_annotation=signature.empty,
    )
    raise InvalidTask(
        f"cannot enqueue {shown}{bare}{where}: "
        f"{problem}; the task could only fail in the worker: {hint}"
    )


def check_option_keywords(fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Refuse a keyword that names an enqueue option when ``fn`` cannot take it.

    ``enqueue(fn, x, eta=...)`` passes ``eta`` to ``fn``, as every keyword is: if
    ``fn`` has no such parameter (and no ``**kwargs``), the task could only fail
    with a TypeError nobody sees, so it is refused here, pointing to with_options.
    What binds is never changed. A task sent by name (a TaskRef) takes any keyword:
    the worker's own code decides, so it passes here; its TaskHandle is checked."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return  # no signature to read (some builtins): let it be
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    takes = {
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    shown = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
    for name in OPTION_NAMES.intersection(kwargs).difference(takes):
        raise ConfigurationError(
            f"{shown}() has no parameter {name!r}, and every keyword given to "
            f"enqueue() goes to the function: to set the {name} option, use "
            f"queue.with_options({name}=...).enqueue(fn, ...)"
        )
