"""Text made safe to show: no database passwords, no terminal control sequences.

Every place that displays or logs a database URL goes through :func:`redact`,
and every CLI line that shows stored text (task names, queue names, errors,
tracebacks, worker ids) goes through :func:`terminal_safe`, so a task's error
cannot move the cursor, clear the screen or retitle the terminal.
"""

from __future__ import annotations

import re
import reprlib
from typing import Any

#: ``scheme://user:PASSWORD@``: everything up to the last ``@`` on the line is
#: treated as the password, so an unencoded ``@`` or ``/`` in it is hidden too
#: (hiding a little too much is better than showing a password).
_USERINFO_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^:/?#@\s]*):[^\n]*@")
#: ``?password=...`` in a query string (libpq and asyncpg accept it).
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#\s]*")

#: C0 controls but tab and newline, DEL, C1 controls, and the Unicode bidi
#: overrides and isolates (which reorder what a terminal shows).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROL_OR_NEWLINE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def redact(text: str) -> str:
    """``text`` with the password of every database URL in it replaced by ``***``."""
    if "://" not in text and "password=" not in text.lower():
        return text
    text = _USERINFO_PASSWORD.sub(r"\1:***@", text)
    return _QUERY_PASSWORD.sub(r"\1***", text)


def terminal_safe(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control characters shown as Python escapes (``\\x1b``,
    ``\\u202e``), so stored text cannot drive the terminal. Tabs stay; newlines
    stay with ``keep_newlines`` (tracebacks), else they are escaped too (one value,
    one line)."""
    pattern = _CONTROL if keep_newlines else _CONTROL_OR_NEWLINE
    return pattern.sub(lambda match: match.group().encode("unicode_escape").decode(), text)


def terminal_safe_data(value: Any) -> Any:
    """``value`` (plain data: dicts, lists, strings) with every string made
    :func:`terminal_safe` on one line; other values are returned as they are."""
    if isinstance(value, str):
        return terminal_safe(value)
    if isinstance(value, dict):
        return {terminal_safe_data(k): terminal_safe_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [terminal_safe_data(v) for v in value]
    return value


#: The longest repr shown for one value (a task's argument or result).
REPR_LIMIT = 2000


def bounded_repr(value: Any, limit: int = REPR_LIMIT) -> str:
    """A repr that stays readable for big values: containers are abbreviated, and
    the text is cut at ``limit`` characters."""
    shaper = reprlib.Repr()
    shaper.maxlist = shaper.maxtuple = shaper.maxset = shaper.maxdict = 20
    shaper.maxstring = shaper.maxother = 400
    shaper.maxlevel = 4
    text = shaper.repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def first_line(text: str | None, limit: int = 160) -> str:
    """The first line of ``text`` (an error message), cut to ``limit`` characters."""
    lines = (text or "").strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def progress_text(done: float, total: float | None, message: str | None) -> str:
    """A progress report as one line: ``30/100 (30%) resizing``; ``30`` without a
    total. The message is stored text: shown without control characters."""
    text = f"{done:g}" if total is None else f"{done:g}/{total:g}"
    if total:
        text += f" ({min(100.0, 100.0 * done / total):.0f}%)"
    if message:
        text += " " + terminal_safe(message)
    return text
