"""Importing the app's modules for a CLI command (`--import MODULE`), with a failure
line that says what to do: where to run the command when the module is not found,
or the file:line and the error when the module itself fails while importing."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import click

from sitq.display import redact

F = TypeVar("F", bound=Callable[..., Any])


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
    at its own folder) and import ``modules`` for `sitq COMMAND`; a failure is one
    line (a click error, exit 1)."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise click.ClickException(redact(import_failure(name, exc, command))) from exc


def import_failure(name: str, exc: BaseException, command: str) -> str:
    """Why ``name`` did not import, and what to do about it."""
    missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
    if missing and (name == missing or name.startswith(missing + ".")):
        return (
            f"cannot import module {name!r} ({type(exc).__name__}: {exc}); check --import "
            f"and that `sitq {command}` runs where the module can be found (e.g. from the "
            "app's directory)"
        )
    # The module was found but raised while importing: where, and what, is the way forward.
    return f"cannot import module {name!r}: {_located(exc)}"


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
