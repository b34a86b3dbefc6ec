"""The rules the workflow layer shares for names and values, and how it words a problem.

What a param, an ``outputs:`` name or a python input may be called; what a whole
number is; how an unknown key is reported (with the closest allowed one); how a
problem names its file, line and step; and how ``FROM=TO`` pairs and numbers are
read from settings.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sitq.workflow.errors import WorkflowValidationError

#: Names every python step's code (and every template) sees, besides its own inputs;
#: params and outputs may not take them.
CODE_NAMES = ("params", "steps", "env", "inputs", "item", "index", "error")
RESERVED_NAMES = frozenset(CODE_NAMES)


def line_of(value: Any, key: Any = None) -> int:
    """The line ``value`` read from YAML (or its ``key``, when given) is on; 0 if unknown."""
    lines = getattr(value, "key_lines", None)
    if key is not None and lines is not None:
        return int(lines.get(key, value.line))
    return getattr(value, "line", 0)


def is_name(value: Any) -> bool:
    """Whether ``value`` may name a param or an output: an identifier, not reserved."""
    return str(value).isidentifier() and value not in RESERVED_NAMES


def is_whole(value: Any, low: int = 1) -> bool:
    """Whether ``value`` is an int (not a bool) of at least ``low``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or a float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def suggest(key: Any, allowed: Iterable[str]) -> str:
    """``did you mean 'x'? `` for the allowed name closest to ``key``, else nothing."""
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


class Problems:
    """Collects problems (or warnings) as ``file:line: step 'x': text``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, line: int, step: str | None, text: str) -> None:
        """One problem at ``line`` (0: the file) of ``step`` (None: the workflow)."""
        where = f"{self.source}:{line}: " if line else f"{self.source}: "
        self.lines.append(where + (f"step {step!r}: " if step else "") + text)

    def unknown_keys(
        self, mapping: Any, allowed: Sequence[str], step: str | None, what: str, where: str = ""
    ) -> None:
        """A problem for each key of ``mapping`` not ``allowed``: ``unknown {what}
        'k'{where}; did you mean ...? allowed: ...``."""
        for key in mapping:
            if key not in allowed:
                self.add(
                    line_of(mapping, key),
                    step,
                    f"unknown {what} {key!r}{where}; {suggest(key, allowed)}"
                    f"allowed: {', '.join(allowed)}",
                )

    def raise_any(self) -> None:
        """Raise WorkflowValidationError listing the problems, if there are any."""
        if self.lines:
            raise WorkflowValidationError(self.lines)


def pairs(entries: Iterable[str], bad: Callable[[str], Exception]) -> tuple[tuple[str, str], ...]:
    """``FROM=TO`` entries as pairs; ``bad(entry)`` is raised for one without ``=``."""
    found = []
    for entry in entries:
        source, sep, target = entry.partition("=")
        if not sep:
            raise bad(entry)
        found.append((source, target))
    return tuple(found)


def env_number(var: str, default: float, low: float, unit: str, whole: bool = False) -> Any:
    """``$var`` as a number of ``unit`` of at least ``low`` (an int if ``whole``), or
    ``default`` when it is not set."""
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        value = low - 1
    if not math.isfinite(value) or value < low:
        number = "a whole number" if whole else "a number"
        raise WorkflowValidationError(
            [f"${var} must be {number} of {unit} >= {low:g}, not {raw!r}"]
        )
    return value
