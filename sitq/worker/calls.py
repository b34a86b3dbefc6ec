"""Running one call of a task function off the event loop, as a tagged reply.

Shared by the task threads and the process-pool children, so a task behaves
the same wherever it runs. A reply is one of:

- ``("ok", result_bytes)``
- ``("error", "ExcType: message", traceback_text)`` (None: the task is not registered)
- ``("load_error", "ExcType: message", traceback_text)``: the payload would not
  deserialize (a traceback when a module's own code raised as it was imported)
- ``("bad_payload", "ExcType: message")``: it was refused (PayloadRejected), or is not a call
- ``("dump_error", "ExcType: message", type_name)``: the return value would not serialize
"""

from __future__ import annotations

import asyncio
import inspect
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from sitq.errors import PayloadRejected, SerializationError
from sitq.registry import TaskRef, resolve
from sitq.serialization import Binding, Serializer, bound_dumps, bound_loads, import_failure

Reply = tuple[Any, ...]
#: What a task's payload and its result are signed for (None: not signing).
Bindings = tuple[Binding | None, Binding | None]


def unpack_call(call: Any, what: str) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """``(fn, args, kwargs)`` from a deserialized payload, or a SerializationError
    naming ``what`` when it is anything else (a row written outside sitq, a
    result copied into a payload): a bad payload fails its task, never the worker."""
    if (
        type(call) is tuple
        and len(call) == 3
        and (callable(call[0]) or isinstance(call[0], TaskRef))
        and isinstance(call[1], tuple)
        and isinstance(call[2], dict)
    ):
        return call
    shape = f"a {type(call).__name__}"
    if isinstance(call, tuple):
        shape += f" of {len(call)} items ({', '.join(type(item).__name__ for item in call[:4])})"
    raise SerializationError(
        f"the stored payload of {what} is {shape}, not a call (function, args tuple, "
        "kwargs dict); it was not written by sitq's enqueue (a row edited by hand or "
        "by another program?): enqueue the task again"
    )


def call_function(
    serializer: Serializer,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    binding: Binding | None = None,
) -> Reply:
    """Call ``fn`` (running it to completion if it returns an awaitable) and
    serialize its return value, signed for ``binding`` when the serializer signs."""
    try:
        value = fn(*args, **kwargs)
        if inspect.isawaitable(value):
            value = asyncio.run(_await(value))
    except BaseException as exc:
        return ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc())
    try:
        return ("ok", bound_dumps(serializer, value, binding))
    except Exception as exc:
        return ("dump_error", f"{type(exc).__name__}: {exc}", type(value).__name__)


def call_payload(serializer: Serializer, payload: bytes, bindings: Bindings) -> Reply:
    """Deserialize a stored ``(fn, args, kwargs)`` payload and call it."""
    try:
        call = bound_loads(serializer, payload, bindings[0])
    except PayloadRejected as exc:
        return ("bad_payload", f"PayloadRejected: {exc}")
    except BaseException as exc:
        failed = import_failure(exc)
        if failed is not None:  # a module's own code raised: say which, and keep its trace
            return ("load_error", failed, traceback.format_exc())
        return ("load_error", f"{type(exc).__name__}: {exc}", None)
    try:
        fn, args, kwargs = unpack_call(call, "this task")
    except SerializationError as exc:
        return ("bad_payload", f"SerializationError: {exc}")
    try:
        fn = resolve(fn)
    except BaseException as exc:  # UnknownTask: another worker may have it
        return ("error", f"{type(exc).__name__}: {exc}", None)
    return call_function(serializer, fn, args, kwargs, bindings[1])


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
