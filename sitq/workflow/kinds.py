"""What one item of a step does: python, shell, http_request and echo, with retries.

This module is what a sitq worker imports to run a workflow item, so it needs
neither PyYAML nor Jinja2: by the time an :class:`ItemCall` is built, every
template has been rendered by the runner. :func:`run_item` is the task function
enqueued on workers and also what the in-process executor runs in its threads.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import json
import os
import signal
import subprocess
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Longest stderr or response body quoted in an item's error.
ERROR_EXCERPT = 2000


class AttrDict(dict):
    """A dict whose keys also read as attributes (``params.x`` as well as ``params['x']``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no key {name!r} (keys: {sorted(self)!r})") from None

    def __reduce__(self) -> tuple[Any, ...]:
        return (AttrDict, (dict(self),))


class EnvView:
    """Environment variables as attributes (``env.API_TOKEN``) or keys; a missing one
    raises an error that names it."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._vars = os.environ if environ is None else environ

    def __getattr__(self, name: str) -> str:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(*exc.args) from None

    def __getitem__(self, name: str) -> str:
        try:
            return self._vars[name]
        except KeyError:
            raise KeyError(f"environment variable {name} is not set") from None

    def __contains__(self, name: object) -> bool:
        return name in self._vars

    def get(self, name: str, default: str | None = None) -> str | None:
        """The variable's value, or ``default`` when it is not set."""
        return self._vars.get(name, default)


@dataclass(frozen=True)
class RetryPolicy:
    """How often an item is tried: ``max_attempts`` in all, waiting ``delay`` seconds
    before the second attempt and ``backoff`` times longer before each further one."""

    max_attempts: int = 1
    delay: float = 0.0
    backoff: float = 1.0

    def wait_before(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (2, 3, ...)."""
        return self.delay * self.backoff ** max(0, attempt - 2)


@dataclass(frozen=True)
class ItemCall:
    """One item of a step, rendered and ready to run anywhere (picklable).

    ``fields`` are the kind's rendered fields (``command``, ``url``, ``message``,
    ...). For python items, ``code`` is the step's code (never templated) and
    ``namespace`` the names it sees.
    """

    step: str
    index: int | None
    kind: str
    fields: dict[str, Any]
    retry: RetryPolicy = RetryPolicy()
    code: str | None = None
    namespace: dict[str, Any] = field(default_factory=dict)
    cwd: str | None = None
    http_base: str | None = None
    http_rewrite: tuple[tuple[str, str], ...] = ()
    #: Fields as written (unrendered) that render secrets, quoted in errors instead.
    shown: dict[str, str] = field(default_factory=dict)
    #: Values (of ``env.*``) masked in errors, so they never reach a stored error.
    secrets: tuple[str, ...] = ()

    def mask(self, text: str | None) -> str | None:
        """``text`` with every secret value replaced by ``***``."""
        if text is None:
            return None
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def quoted(self, key: str) -> str:
        """A field for an error: as written when it was a template, else its value."""
        return self.shown.get(key, str(self.fields.get(key)))


@dataclass(frozen=True)
class ItemOutcome:
    """How an item ended after its last attempt."""

    ok: bool
    value: Any = None
    error: str | None = None
    traceback: str | None = None
    attempts: int = 0


class ItemFailure(Exception):
    """An item failed in a way its own message explains fully (no traceback needed)."""


def run_item(call: ItemCall, on_attempt: Callable[[int], None] | None = None) -> ItemOutcome:
    """Run ``call`` with its retry policy; never raises: failures are in the outcome.

    ``on_attempt(n)`` is called as attempt ``n`` starts (in-process runs use it to
    record attempts as they happen).
    """
    policy = call.retry
    error: str | None = None
    trace: str | None = None
    attempt = 0
    for attempt in range(1, max(1, policy.max_attempts) + 1):
        if attempt > 1:
            time.sleep(policy.wait_before(attempt))
        if on_attempt is not None:
            on_attempt(attempt)
        try:
            value = _run_once(call)
        except ItemFailure as exc:
            error, trace = str(exc), None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            trace = traceback.format_exc()
        else:
            return ItemOutcome(ok=True, value=value, attempts=attempt)
    return ItemOutcome(
        ok=False, error=call.mask(error), traceback=call.mask(trace), attempts=attempt
    )


class ItemFailed(Exception):
    """Raised by :func:`run_item_task` for an item that failed all its attempts, so
    that its sitq task ends FAILED (seen by queue counts, the dashboard and
    ``sitq retry --failed``) with the item's error as the task's."""

    def __init__(self, outcome: ItemOutcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome

    def __str__(self) -> str:
        text = self.outcome.error or "the item failed"
        if self.outcome.traceback:
            text += ITEM_TRACEBACK + self.outcome.traceback.rstrip("\n")
        return text


#: Separates an item's error from its own traceback in a failed task's error.
ITEM_TRACEBACK = "\n--- the item's traceback ---\n"
#: How a failed task's error of an ItemFailed starts (the worker writes "Type: text").
ITEM_FAILED_PREFIX = f"{ItemFailed.__name__}: "


def run_item_task(call: ItemCall) -> ItemOutcome:
    """The task function workers run for an item: :func:`run_item`'s outcome when it
    succeeded; an item that failed raises ItemFailed, so that its task fails too."""
    outcome = run_item(call)
    if not outcome.ok:
        raise ItemFailed(outcome)
    return outcome


def failed_item_outcome(error: str, attempts: int) -> ItemOutcome | None:
    """The outcome of an item from its failed task's ``error``, when ItemFailed
    failed it (None for another failure: a timeout, a lost worker, ...)."""
    if not error.startswith(ITEM_FAILED_PREFIX):
        return None
    text = error[len(ITEM_FAILED_PREFIX) :]
    message, sep, item_traceback = text.rpartition(ITEM_TRACEBACK)
    if not sep:
        message, item_traceback = text, ""
    return ItemOutcome(ok=False, error=message, traceback=item_traceback or None, attempts=attempts)


def _run_once(call: ItemCall) -> Any:
    # The kind was checked with the workflow file (sitq.workflow.parse).
    if call.kind == "echo":
        return call.fields.get("message")
    return {"python": _run_python, "shell": _run_shell, "http_request": _run_http}[call.kind](call)


# -- python ---------------------------------------------------------------------------


def compile_code(code: str, filename: str, names: Sequence[str]) -> Any:
    """Compile a python step's ``code`` as the body of a function of ``names``.

    The code may ``return`` a value or set ``result``; a SyntaxError names the
    line within the code.
    """
    body = ast.parse(code, filename).body
    wrapper = ast.parse(f"def __sitq_step__({', '.join(names)}):\n    pass\n")
    function = wrapper.body[0]
    assert isinstance(function, ast.FunctionDef)
    # Without an explicit return, the value of `result` (None if it was never set).
    tail = ast.parse("try:\n    return result\nexcept NameError:\n    return None\n").body
    for node in tail:
        ast.increment_lineno(node, max(0, len(code.splitlines())))
    function.body = [*body, *tail]
    ast.fix_missing_locations(wrapper)
    return compile(wrapper, filename, "exec")


def _run_python(call: ItemCall) -> Any:
    variables = dict(call.namespace)
    inputs = AttrDict(call.fields.get("inputs") or {})
    variables.setdefault("env", EnvView())
    variables["inputs"] = inputs
    for name, value in inputs.items():
        variables[name] = value
    if call.code is None:
        return _run_operation(call, variables)
    names = sorted(variables)
    code = compile_code(call.code, f"<workflow step {call.step!r}>", names)
    scope: dict[str, Any] = {"__builtins__": builtins, "__name__": "__sitq_workflow__"}
    exec(code, scope)
    return scope["__sitq_step__"](*(variables[name] for name in names))


#: The operations a python step without ``code`` can name.
OPERATIONS = ("multiply", "add", "sum", "count", "identity")


def _run_operation(call: ItemCall, variables: dict[str, Any]) -> Any:
    """A named operation on ``item``: ``multiply`` by ``factor``, ``add`` ``value``
    (element-wise on lists), ``sum``, ``count`` or ``identity``."""
    operation = call.fields.get("operation")
    value = variables.get("item")

    def each(fn: Callable[[Any], Any]) -> Any:
        return [fn(v) for v in value] if isinstance(value, list | tuple) else fn(value)

    if operation == "multiply":
        factor = variables.get("factor", 1)
        return each(lambda v: v * factor)
    if operation == "add":
        amount = variables.get("value", 0)
        return each(lambda v: v + amount)
    if operation == "sum":
        return sum(value or ())
    if operation == "count":
        return len(value or ())
    if operation == "identity":
        return value
    raise ItemFailure(
        f"step {call.step!r}: unknown operation {operation!r}; use one of {', '.join(OPERATIONS)} "
        "or give the step `code`"
    )


# -- shell ----------------------------------------------------------------------------


def _run_shell(call: ItemCall) -> str:
    fields = call.fields
    command = str(fields["command"])
    cwd = fields.get("cwd") or call.cwd
    if cwd is not None and not os.path.isdir(cwd):
        cwd = None  # a worker on another host: run in its own directory
    extra_env = {str(k): str(v) for k, v in (fields.get("env") or {}).items()}
    timeout = fields.get("timeout")
    # In a session of its own, so that a timeout kills the command's whole process
    # group (the shell and whatever it started), not just /bin/sh.
    proc = subprocess.Popen(
        command,
        shell=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**os.environ, **extra_env} if extra_env else None,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=None if timeout is None else float(timeout))
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        if not isinstance(exc, subprocess.TimeoutExpired):
            raise
        raise ItemFailure(f"command timed out after {timeout}s: {call.quoted('command')}") from None
    if proc.returncode != 0:
        stderr = err.strip()[-ERROR_EXCERPT:] or "(nothing on stderr)"
        raise ItemFailure(
            f"command exited with status {proc.returncode}: {call.quoted('command')}\n{stderr}"
        )
    return out.rstrip("\n")


# -- http_request ---------------------------------------------------------------------


def resolve_url(url: str, base: str | None, rewrite: Sequence[tuple[str, str]]) -> str:
    """Apply the run's URL rewrites (longest prefix first), then resolve a relative
    URL against ``base``."""
    for prefix, target in sorted(rewrite, key=lambda pair: -len(pair[0])):
        if url.startswith(prefix):
            url = target + url[len(prefix) :]
            break
    if urllib.parse.urlsplit(url).scheme in ("http", "https"):
        return url
    if base is None:
        raise ItemFailure(
            f"url {url!r} is not an absolute http(s) URL: give a full URL, or a base for "
            "relative ones (`--http-base URL` / $SITQ_WORKFLOW_HTTP_BASE)"
        )
    return urllib.parse.urljoin(base if base.endswith("/") else base + "/", url)


def _run_http(call: ItemCall) -> dict[str, Any]:
    fields = call.fields
    url = resolve_url(str(fields["url"]), call.http_base, call.http_rewrite)
    method = str(fields.get("method") or "GET").upper()
    headers = {str(k): str(v) for k, v in (fields.get("headers") or {}).items()}
    body = fields.get("body")
    data: bytes | None = None
    if isinstance(body, bytes):
        data = body
    elif isinstance(body, str):
        data = body.encode()
    elif body is not None:
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    timeout = float(fields.get("timeout") or 30.0)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
            response_headers = dict(response.headers.items())
    except urllib.error.HTTPError as exc:
        excerpt = exc.read()[:ERROR_EXCERPT].decode(errors="replace")
        raise ItemFailure(
            f"HTTP {exc.code} {exc.reason} from {method} {call.quoted('url')}: {excerpt}"
        ) from None
    except urllib.error.URLError as exc:
        raise ItemFailure(f"{method} {call.quoted('url')} failed: {exc.reason}") from None
    text = raw.decode(errors="replace")
    content_type = response_headers.get("Content-Type", "")
    parsed: Any = text
    if "json" in content_type:
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
    return {"status": status, "headers": response_headers, "body": parsed}
