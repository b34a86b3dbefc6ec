"""Calls turned into task rows: each call of a function serialized (signed and
bound to its row when the serializer signs) with the options it was enqueued with.
The enqueue path of ``TaskQueue`` and its sync face, kept out of ``queue.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sitq.backends.base import NewTask
from sitq.errors import ConfigurationError, SerializationError
from sitq.headers import encode as encode_headers
from sitq.records import check_callable, task_name
from sitq.serialization import Serializer, payload_binding
from sitq.task import OPTION_NAMES, TaskOptions, check_option_keywords, new_task_ids


def explain_unpicklable(
    serializer: Serializer, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str:
    """Name the first part of a call that will not serialize."""
    parts: list[tuple[str, Any]] = [(f"the callable {task_name(fn)}", fn)]
    parts += [(f"argument {i + 1}", arg) for i, arg in enumerate(args)]
    parts += [(f"keyword argument {key!r}", value) for key, value in kwargs.items()]
    for label, value in parts:
        try:
            serializer.dumps(value)
        except Exception as exc:
            return f"{label} ({type(value).__name__}) cannot be serialized: {exc}"
    return "the call cannot be serialized"


def serializes(serializer: Serializer, value: Any) -> bool:
    """Whether ``value`` serializes."""
    try:
        serializer.dumps(value)
    except Exception:
        return False
    return True


def as_calls(items: Iterable[Any]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """enqueue_many's items as calls: a tuple is the arguments, anything else one argument."""
    try:
        iterator = iter(items)
    except TypeError:
        raise ConfigurationError(
            f"enqueue_many needs an iterable of items (each a tuple of arguments, or one "
            f"argument), got {type(items).__name__} {items!r:.80}; for a single call use "
            "enqueue(fn, ...)"
        ) from None
    empty: dict[str, Any] = {}
    return [(item if isinstance(item, tuple) else (item,), empty) for item in iterator]


def new_tasks(
    serializer: Serializer,
    options: TaskOptions,
    fn: Callable[..., Any],
    calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
    now: float,
    headers: dict[str, str] | None = None,
) -> list[NewTask]:
    """The task rows of calls of ``fn``: each call serialized (signed and bound to
    its row when ``serializer`` signs); what is the same for every call is done once.

    ``headers`` (trace context) are framed in front of each payload."""
    check_callable(fn)
    if calls and calls[0][1] and not OPTION_NAMES.isdisjoint(calls[0][1]):
        check_option_keywords(fn, calls[0][1])  # only enqueue() passes keywords
    name = task_name(fn)
    available_at = options.available_at(now)
    retry_backoff = float(options.retry_backoff)
    timeout = None if options.timeout is None else float(options.timeout)
    result_ttl = None if options.result_ttl is None else float(options.result_ttl)
    # Ids are made here, before signing: a signed payload is bound to its row.
    ids = new_task_ids(len(calls))
    bound = getattr(serializer, "dumps_bound", None)
    try:
        if bound is None:  # not signing: nothing more per task than the pickling
            dumps = serializer.dumps
            payloads = [dumps((fn, args, kwargs)) for args, kwargs in calls]
        else:
            payloads = [
                bound((fn, args, kwargs), payload_binding(task_id, name, options.queue))
                for task_id, (args, kwargs) in zip(ids, calls, strict=True)
            ]
    except Exception as exc:
        bad = next((c for c in calls if not serializes(serializer, (fn, *c))), None)
        if bad is None:  # it failed once but not again: report what it said
            raise SerializationError(f"cannot enqueue {name}: {type(exc).__name__}: {exc}") from exc
        raise SerializationError(
            f"cannot enqueue {name}: "
            f"{explain_unpicklable(serializer, fn, bad[0], bad[1])}; pass only "
            "picklable values (no open files, sockets, locks or connections)"
        ) from exc
    prefix = encode_headers(headers) if headers else None
    if prefix is not None:
        payloads = [prefix + payload for payload in payloads]
    queue, priority, unique_key = options.queue, options.priority, options.unique_key
    max_retries, limit_key = options.max_retries, options.limit_key
    return [
        NewTask(
            task_id,
            queue,
            name,
            payload,
            priority,
            now,
            available_at,
            max_retries,
            retry_backoff,
            timeout,
            unique_key,
            result_ttl,
            limit_key,
        )
        for task_id, payload in zip(ids, payloads, strict=True)
    ]
