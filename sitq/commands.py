"""What every ``sitq`` command shares: the ``--db`` and ``--import`` options, errors
as one line, and running a coroutine against the database."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from sitq.display import bounded_repr, redact
from sitq.errors import SitqError
from sitq.headers import unwrap as unwrap_headers
from sitq.queue import TaskQueue
from sitq.serialization import (
    CloudpickleSerializer,
    Serializer,
    bound_loads,
    default_serializer,
    payload_binding,
)

if TYPE_CHECKING:
    from sitq import TaskRecord

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

db_option = click.option(
    "--db",
    envvar="SITQ_DB",
    default="sitq.db",
    show_default=True,
    help="Database path or URL (defaults to $SITQ_DB, else sitq.db).",
)


def fail(message: str) -> NoReturn:
    """Stop the command with ``message`` on stderr, exit status 1."""
    # Every error line passes here: a database URL in it never shows its password.
    raise click.ClickException(redact(message))


def run_on_queue(
    db: str,
    action: Callable[[TaskQueue], Awaitable[T]],
    *,
    create: bool = False,
    alongside: bool = False,
) -> T:
    """Open the database (an existing one unless ``create``; ``alongside``: see
    TaskQueue), run ``action`` on it and close it; a SitqError ends the command
    with its one line."""

    async def main() -> T:
        # The commands load no payload through this queue (`inspect` uses its own
        # serializer): a malformed $SITQ_SECRET_KEY must not stop `sitq status`.
        serializer = CloudpickleSerializer()
        async with TaskQueue(db, serializer, create=create, alongside=alongside) as queue:
            return await action(queue)

    try:
        return asyncio.run(main())
    except SitqError as exc:
        fail(str(exc))


async def _describe(queue: TaskQueue) -> str:
    return queue.describe()


def open_database(db: str) -> str:
    """Open the existing database once, never creating it (a mistyped path is an
    error, not a new empty database), and say what it is: a missing file, a wrong
    schema version or an unreachable server ends the command with one line."""
    return run_on_queue(db, _describe)


def app_serializer() -> Serializer:
    """The serializer the app's workers use (signed when $SITQ_SECRET_KEY is set);
    a malformed key ends the command with one line."""
    try:
        return default_serializer()
    except SitqError as exc:
        fail(str(exc))


def call_of(record: TaskRecord, serializer: Serializer) -> str:
    """A task's call as it would be written, ``name(1, 'x', key=2)`` with bounded
    reprs, loaded with ``serializer`` (after any trace headers); raises what loading
    raises (e.g. ImportError for a module of the app this process cannot import)."""
    if record.payload is None:
        raise ValueError("the payload is not stored")
    body = unwrap_headers(record.payload)[1]
    binding = payload_binding(record.id, record.func_name, record.queue)
    _, args, kwargs = bound_loads(serializer, body, binding)
    parts = [bounded_repr(arg) for arg in args]
    parts += [f"{key}={bounded_repr(value)}" for key, value in kwargs.items()]
    return f"{record.func_name}({', '.join(parts)})"


def import_option(purpose: str) -> Callable[[F], F]:
    """The ``--import/-i MODULE`` option (repeatable, passed as ``imports``) of a
    command that loads the app's code; ``purpose`` says what importing is for."""
    return click.option(
        "--import",
        "-i",
        "imports",
        multiple=True,
        metavar="MODULE",
        help=f"Module to import first, {purpose} (repeatable).",
    )


def import_modules(modules: tuple[str, ...], command: str) -> None:
    """Put the current directory on the import path (a console script's path starts
    at its own folder) and import ``modules`` for `sitq COMMAND`; a failure says
    where to run the command (module not found) or where the module failed."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
            if missing and (name == missing or name.startswith(missing + ".")):
                fail(
                    f"cannot import module {name!r} ({type(exc).__name__}: {exc}); check "
                    f"--import and that `sitq {command}` runs where the module can be found "
                    "(e.g. from the app's directory)"
                )
            # Found but raised while importing: where, and what, is the way forward.
            fail(f"cannot import module {name!r}: {_located(exc)}")


def _located(exc: BaseException) -> str:
    """``file:line: Type: message`` for a SyntaxError, or for the innermost frame
    that raised (frames of the import machinery left out)."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}: {type(exc).__name__}: {exc.msg}"
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")
    ]
    where = f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""
    return f"{where}{type(exc).__name__}: {exc}"
