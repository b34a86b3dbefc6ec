"""Registered tasks: functions sent by name, run from the worker's own code.

``@queue.task(...)`` registers a function under a name (its ``module.qualname``
unless given) and returns a :class:`TaskHandle`. The database then stores only
the name and the arguments; a worker that imported the module runs the code it
has, never code from the database. An unknown name fails that task with an
error saying which module to import.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from sitq.canvas import Signature
from sitq.errors import ConfigurationError, SitqError
from sitq.task import OPTION_NAMES, TaskOptions, check_arguments, check_option_keywords

if TYPE_CHECKING:
    from sitq.enqueuer import Enqueuer
    from sitq.queue import TaskQueue

P = ParamSpec("P")
R = TypeVar("R")

_registry: dict[str, Callable[..., Any]] = {}


class UnknownTask(SitqError, LookupError):
    """A task names a registered function this process does not have."""


class TaskRef:
    """What is pickled in place of a registered function: just its name."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskRef, (self.name,))

    def __repr__(self) -> str:
        return f"TaskRef({self.name!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return resolve(self)(*args, **kwargs)


def register(name: str, fn: Callable[..., Any]) -> None:
    """Make ``fn`` runnable by name in this process."""
    existing = _registry.get(name)
    if existing is not None and existing is not fn and _identity(existing) != _identity(fn):
        raise ConfigurationError(
            f"task name {name!r} is already registered for {_identity(existing)}; "
            "give one of them another name=..."
        )
    _registry[name] = fn


def resolve(fn: Any) -> Any:
    """The function to run for ``fn``: a TaskRef becomes its registered function."""
    if not isinstance(fn, TaskRef):
        return fn
    try:
        return _registry[fn.name]
    except KeyError:
        if fn.name.startswith("__main__."):
            # Registered by a script run as `python script.py`: no worker can import
            # that module, so --import would not help.
            raise UnknownTask(
                f"no task named {fn.name!r} is registered in this worker: it was "
                "registered in a script run as __main__, which `sitq worker` cannot import; "
                "define it with @queue.task in a module that the script imports and "
                "start the worker with `--import MODULE` for it (or give it a name= that "
                "such a module registers)"
            ) from None
        raise UnknownTask(
            f"no task named {fn.name!r} is registered in this worker: start it with "
            "`--import MODULE` for the module that defines it with @queue.task"
        ) from None


def _identity(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


class TaskHandle(Generic[P, R]):
    """A registered task. Calling it runs the function here and now;
    ``await handle.enqueue(...)`` queues a run with the registered options,
    type-checked against the function's own signature."""

    def __init__(
        self,
        queue: TaskQueue,
        fn: Callable[P, R],
        name: str,
        enqueuer: Enqueuer,
    ) -> None:
        self.fn = fn
        self.name = name
        self.queue = queue
        self._enqueuer = enqueuer
        self._ref = TaskRef(name)
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<TaskHandle {self.name} options={self._enqueuer.options}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    @property
    def ref(self) -> TaskRef:
        """What is stored in place of the function: its registered name."""
        return self._ref

    @property
    def options(self) -> TaskOptions:
        """The TaskOptions this handle enqueues with."""
        return self._enqueuer.options

    def with_options(self, **options: Any) -> TaskHandle[P, R]:
        """The same task with some options overridden (see TaskOptions)."""
        return TaskHandle(self.queue, self.fn, self.name, self._enqueuer.with_options(**options))

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Queue a run of the task by name; returns its id once committed.

        A keyword named like an enqueue option that the function cannot take is
        refused here, as for ``queue.enqueue`` (use ``with_options``)."""
        if kwargs and not OPTION_NAMES.isdisjoint(kwargs):
            check_option_keywords(self.fn, kwargs)
        check_arguments(self.fn, [(args, kwargs)])
        return await self._enqueuer.enqueue(self._ref, *args, **kwargs)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A call of this task to compose (chain, group, chord) and submit later,
        with this handle's options (more with ``.set(...)``)."""
        return Signature(self._ref, args, kwargs, {}, self.options)

    async def enqueue_many(self, items: Any) -> list[str]:
        """One run per item (a tuple of positional arguments, or one argument)."""
        return await self._enqueuer.enqueue_many(self._ref, items)
