"""A workflow file as a checked model: every problem found before anything runs.

:func:`parse_workflow` checks the structure (keys, types, step kinds, template
syntax, references to other steps, where ``item`` and ``error`` may appear) and
:func:`check_names` checks the free template names against the run's params,
the steps' ``outputs`` and the environment. Each problem is one line naming
the file, the line and the step.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from sitq.workflow.errors import TemplateError, WorkflowValidationError
from sitq.workflow.kinds import CODE_NAMES, ITEM_KINDS, OPERATIONS, RetryPolicy, compile_code
from sitq.workflow.loader import YamlMap, check_size, load_yaml
from sitq.workflow.templates import analyse, is_template

TOP_KEYS = ("name", "description", "params", "steps")
STEP_KEYS = ("name", "description", "type", "task", "inputs", "for_each", "retry", "outputs",
             "continue_on_error", "max_parallel")  # fmt: skip
NESTED_KEYS = ("type", "task", "inputs", "retry", "description")
BATCH_FIELDS = ("items", "batch_size", "parallel", "max_parallel", "continue_on_error",
                "on_item_error", "task")  # fmt: skip
#: Each kind's fields (they may sit on the step itself or under ``inputs``).
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "python": ("code", "operation"),
    "shell": ("command", "cwd", "env", "timeout"),
    "http_request": ("url", "method", "headers", "body", "timeout"),
    "echo": ("message",),
}
REQUIRED_FIELDS = {"shell": "command", "http_request": "url", "echo": "message"}
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
RETRY_KEYS = ("max_attempts", "delay", "backoff")
#: Names every template sees; params and outputs may not take them.
RESERVED_NAMES = frozenset(CODE_NAMES)


@dataclass(frozen=True)
class TaskSpec:
    """What runs for one item: a kind, its (unrendered) fields, code and retry."""

    kind: str
    fields: dict[str, Any]
    line: int
    code: str | None = None
    code_line: int = 0
    retry: RetryPolicy | None = None
    #: The line each field is written on (for warnings).
    field_lines: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchSpec:
    """A ``task: batch`` step: its items, how they are grouped and run, and its task."""

    items: Any
    task: TaskSpec
    batch_size: int | None = None
    parallel: bool = False
    max_parallel: int | None = None
    continue_on_error: bool = False
    on_item_error: TaskSpec | None = None
    #: The line ``items`` is written on (for errors).
    items_line: int = 0


@dataclass(frozen=True)
class StepSpec:
    """One step: a single task, a ``for_each`` over a task, or a batch."""

    name: str
    position: int
    line: int
    task: TaskSpec | None = None
    batch: BatchSpec | None = None
    for_each: Any = None
    retry: RetryPolicy | None = None
    outputs: str | None = None
    continue_on_error: bool = False
    max_parallel: int | None = None
    #: The line ``for_each`` is written on (for errors).
    for_each_line: int = 0

    @property
    def item_task(self) -> TaskSpec:
        """The task each item runs."""
        task = self.batch.task if self.batch is not None else self.task
        assert task is not None
        return task

    @property
    def has_items(self) -> bool:
        """True for batch and for_each steps (their result is a list)."""
        return self.batch is not None or self.for_each is not None


@dataclass(frozen=True)
class WorkflowSpec:
    """A checked workflow file."""

    source: str
    text: str
    steps: list[StepSpec]
    name: str | None = None
    description: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def step(self, name: str) -> StepSpec:
        """The step called ``name``."""
        return next(s for s in self.steps if s.name == name)


# -- parsing ----------------------------------------------------------------------------


class _Problems:
    """Collects problems as ``file:line: step 'x': text``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, line: int, step: str | None, text: str) -> None:
        where = f"{self.source}:{line}: " if line else f"{self.source}: "
        self.lines.append(where + (f"step {step!r}: " if step else "") + text)

    def raise_any(self) -> None:
        if self.lines:
            raise WorkflowValidationError(self.lines)


def _suggest(key: str, allowed: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _a(kind: str) -> str:
    """``kind`` with its article: "an echo", "a shell"."""
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"


def _line(mapping: Any, key: Any = None) -> int:
    if isinstance(mapping, YamlMap):
        return mapping.line_of(key) if key is not None else mapping.line
    return getattr(mapping, "line", 0)


def parse_workflow(text: str, source: str = "<string>") -> WorkflowSpec:
    """Check a workflow's text and build its model; raise WorkflowValidationError
    listing every problem."""
    check_size(len(text.encode(errors="replace")), source)
    doc = load_yaml(text, source)
    problems = _Problems(source)
    if not isinstance(doc, dict):
        problems.add(_line(doc), None, "a workflow is a mapping with a `steps:` key")
        problems.raise_any()
    for key in doc:
        if key not in TOP_KEYS:
            problems.add(
                _line(doc, key),
                None,
                f"unknown top-level key {key!r}; {_suggest(key, TOP_KEYS)}"
                f"allowed: {', '.join(TOP_KEYS)}",
            )
    params = doc.get("params") or {}
    if not isinstance(params, dict):
        problems.add(_line(doc, "params"), None, "params must be a mapping of name: default")
        params = {}
    for name in params:
        if name in RESERVED_NAMES or not str(name).isidentifier():
            problems.add(
                _line(params, name), None, f"param name {name!r} is reserved or not an identifier"
            )
    steps = _parse_steps(doc, problems)
    spec = WorkflowSpec(
        source=source,
        text=text,
        steps=steps,
        name=doc.get("name"),
        description=doc.get("description"),
        params=dict(params),
    )
    # The templates of every step that could be read are checked even when others
    # have problems, so one attempt lists them all; steps that could not be read
    # are still names other steps may refer to.
    unread = frozenset(_step_names(doc)) - {step.name for step in steps}
    _check_templates(spec, problems, names=None, unread=unread)
    problems.raise_any()
    return spec


def _step_names(doc: dict[str, Any]) -> list[str]:
    """Every step name the file gives, readable or not."""
    raw = doc.get("steps")
    if isinstance(raw, dict):
        return [str(name) for name in raw]
    if isinstance(raw, list):
        return [b["name"] for b in raw if isinstance(b, dict) and isinstance(b.get("name"), str)]
    return []


def _parse_steps(doc: dict[str, Any], problems: _Problems) -> list[StepSpec]:
    raw = doc.get("steps")
    named: list[tuple[str, Any, int]] = []
    if isinstance(raw, dict):
        named = [(str(name), body, _line(raw, name)) for name, body in raw.items()]
    elif isinstance(raw, list):
        lines = getattr(raw, "item_lines", [])
        seen: dict[str, int] = {}
        for i, body in enumerate(raw):
            line = lines[i] if i < len(lines) else _line(raw)
            name = body.get("name") if isinstance(body, dict) else None
            if not isinstance(name, str) or not name:
                problems.add(line, None, f"step {i + 1} of the list has no `name:`")
                continue
            if name in seen:
                problems.add(line, name, f"a step of this name is already on line {seen[name]}")
                continue
            seen[name] = line
            named.append((name, body, line))
    else:
        problems.add(
            _line(doc, "steps"),
            None,
            "`steps:` must be a mapping of name: step, or a list of steps with `name:`",
        )
        return []
    if not named and not problems.lines:
        problems.add(_line(doc, "steps"), None, "the workflow has no steps")
    steps = []
    outputs: dict[str, str] = {}
    for position, (name, body, line) in enumerate(named):
        step = _parse_step(name, body, line, position, problems)
        if step is None:
            continue
        if step.outputs is not None:
            if step.outputs in outputs:
                problems.add(
                    _line(body, "outputs"),
                    name,
                    f"outputs name {step.outputs!r} is already used by step "
                    f"{outputs[step.outputs]!r}",
                )
            elif step.outputs in (doc.get("params") or {}):
                problems.add(
                    _line(body, "outputs"), name, f"outputs {step.outputs!r} is also a param name"
                )
            outputs[step.outputs] = name
        steps.append(step)
    return steps


def _kind_of(body: dict[str, Any], step: str, problems: _Problems) -> str | None:
    kind = body.get("type")
    task = body.get("task")
    if kind is None and isinstance(task, str):
        kind = task
    elif isinstance(task, str) and task != kind:
        problems.add(_line(body, "task"), step, f"type {kind!r} and task {task!r} disagree")
        return None
    allowed = (*ITEM_KINDS, "batch")
    if kind is None:
        problems.add(
            _line(body),
            step,
            f"no step kind: add `type:` (one of {', '.join(ITEM_KINDS)}) or `task: batch`",
        )
        return None
    if kind not in allowed:
        problems.add(
            _line(body, "type" if "type" in body else "task"),
            step,
            f"unknown step kind {kind!r}; {_suggest(kind, allowed)}use one of {', '.join(allowed)}",
        )
        return None
    return kind


def _merged_fields(
    body: dict[str, Any],
    inputs: dict[str, Any],
    field_names: tuple[str, ...],
    step: str,
    problems: _Problems,
) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in field_names:
        if key in body and key in inputs:
            problems.add(
                _line(inputs, key), step, f"{key!r} is given both on the step and in inputs"
            )
        if key in inputs:
            merged[key] = inputs[key]
        elif key in body:
            merged[key] = body[key]
    return merged


def _parse_step(
    name: str, body: Any, line: int, position: int, problems: _Problems
) -> StepSpec | None:
    if not isinstance(body, dict):
        problems.add(line, name, "a step must be a mapping (type:, inputs:, ...)")
        return None
    kind = _kind_of(body, name, problems)
    if kind is None:
        return None
    inputs = body.get("inputs") or {}
    if not isinstance(inputs, dict):
        problems.add(_line(body, "inputs"), name, "inputs must be a mapping")
        return None
    kind_fields = BATCH_FIELDS if kind == "batch" else KIND_FIELDS[kind]
    allowed = (*STEP_KEYS, *kind_fields)
    for key in body:
        if key not in allowed:
            problems.add(
                _line(body, key),
                name,
                f"unknown key {key!r} for {_a(kind)} step; {_suggest(key, allowed)}"
                f"allowed: {', '.join(allowed)}",
            )
    retry = _retry(body, name, problems)
    outputs = body.get("outputs")
    if outputs is not None and (
        not isinstance(outputs, str) or not outputs.isidentifier() or outputs in RESERVED_NAMES
    ):
        problems.add(
            _line(body, "outputs"),
            name,
            "outputs must be a name (an identifier other than "
            f"{', '.join(sorted(RESERVED_NAMES))})",
        )
        outputs = None
    for_each = body.get("for_each")
    if "for_each" in body and not (isinstance(for_each, list) or is_template(for_each)):
        problems.add(
            _line(body, "for_each"),
            name,
            f"for_each must be a list, or a template that gives one "
            f'(for_each: "{{{{ steps.NAME.result }}}}"), not {type(for_each).__name__} '
            f"{for_each!r:.60}",
        )
    common: dict[str, Any] = {
        "name": name,
        "position": position,
        "line": line,
        "for_each": for_each,
        "for_each_line": _line(body, "for_each"),
        "retry": retry,
        "outputs": outputs,
        "continue_on_error": _flag(body, "continue_on_error", name, problems),
        "max_parallel": _positive(body, "max_parallel", name, problems),
    }
    if kind == "batch":
        # `task: batch` on the step names the kind; the batch's own task is in inputs.
        own = {k: v for k, v in body.items() if not (k == "task" and isinstance(v, str))}
        merged = _merged_fields(own, inputs, BATCH_FIELDS, name, problems)
        for key in inputs:
            if key not in BATCH_FIELDS:
                problems.add(
                    _line(inputs, key),
                    name,
                    f"unknown batch input {key!r}; {_suggest(key, BATCH_FIELDS)}"
                    f"allowed: {', '.join(BATCH_FIELDS)}",
                )
        batch = _parse_batch(merged, body, inputs, name, problems)
        if batch is None:
            return None
        common["continue_on_error"] = batch.continue_on_error or common["continue_on_error"]
        return StepSpec(batch=batch, **common)
    task = _parse_task_fields(kind, body, inputs, name, problems, retry=None)
    return StepSpec(task=task, **common) if task is not None else None


def _parse_task_fields(
    kind: str,
    body: dict[str, Any],
    inputs: dict[str, Any],
    step: str,
    problems: _Problems,
    retry: RetryPolicy | None,
) -> TaskSpec | None:
    fields = _merged_fields(body, inputs, KIND_FIELDS[kind], step, problems)
    code: str | None = None
    code_line = 0
    if kind == "python":
        variables = {k: v for k, v in inputs.items() if k not in KIND_FIELDS["python"]}
        for key in variables:
            if not str(key).isidentifier():
                problems.add(
                    _line(inputs, key), step, f"python input {key!r} is not a valid variable name"
                )
        code = fields.pop("code", None)
        if code is not None:
            holder = inputs if "code" in inputs else body
            code_line = _line(holder, "code") + 1
            if not isinstance(code, str):
                problems.add(code_line - 1, step, "code must be text (use `code: |`)")
                code = None
        operation = fields.get("operation")
        if code is None and operation is None:
            problems.add(
                _line(body),
                step,
                f"a python step needs `code` (or `operation`: one of {', '.join(OPERATIONS)})",
            )
        elif code is None and operation not in OPERATIONS and not is_template(operation):
            problems.add(
                _line(inputs if "operation" in inputs else body, "operation"),
                step,
                f"unknown operation {operation!r}; use one of {', '.join(OPERATIONS)}",
            )
        if code is not None:
            try:
                compile_code(code, "<code>", CODE_NAMES)
            except SyntaxError as exc:
                problems.add(
                    code_line + (exc.lineno or 1) - 1, step, f"python syntax error: {exc.msg}"
                )
        fields["inputs"] = variables
    else:
        for key in inputs:
            if key not in KIND_FIELDS[kind]:
                allowed = KIND_FIELDS[kind]
                problems.add(
                    _line(inputs, key),
                    step,
                    f"unknown input {key!r} for {_a(kind)} step; {_suggest(key, allowed)}"
                    f"allowed: {', '.join(allowed)}",
                )
        required = REQUIRED_FIELDS.get(kind)
        if required and required not in fields:
            problems.add(_line(body), step, f"{_a(kind)} step needs `{required}`")
        _check_field_types(kind, fields, body, inputs, step, problems)
    field_lines = {k: _line(inputs if k in inputs else body, k) for k in fields}
    return TaskSpec(
        kind=kind,
        fields=fields,
        line=_line(body),
        code=code,
        code_line=code_line,
        retry=retry,
        field_lines=field_lines,
    )


def _check_field_types(
    kind: str,
    fields: dict[str, Any],
    body: dict[str, Any],
    inputs: dict[str, Any],
    step: str,
    problems: _Problems,
) -> None:
    def where(key: str) -> int:
        return _line(inputs if key in inputs else body, key)

    for key, value in fields.items():
        if is_template(value):
            continue
        if key in ("command", "url", "cwd") and not isinstance(value, str):
            problems.add(where(key), step, f"{key} must be text, not {type(value).__name__}")
        elif key in ("headers", "env") and not isinstance(value, dict):
            problems.add(where(key), step, f"{key} must be a mapping of name: value")
        elif key == "timeout" and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            problems.add(where(key), step, "timeout must be a positive number of seconds")
        elif key == "method" and str(value).upper() not in HTTP_METHODS:
            problems.add(
                where(key), step, f"unknown HTTP method {value!r}; use one of {HTTP_METHODS}"
            )


def _parse_nested(
    value: Any, line: int, label: str, step: str, problems: _Problems
) -> TaskSpec | None:
    """A batch's ``task`` or ``on_item_error``: a mapping with its own kind."""
    if not isinstance(value, dict):
        problems.add(line, step, f"{label} must be a mapping with `type:` and its fields")
        return None
    kind = _kind_of(value, step, problems)
    if kind is None:
        return None
    if kind == "batch":
        problems.add(_line(value), step, f"{label} cannot itself be a batch")
        return None
    inputs = value.get("inputs") or {}
    if not isinstance(inputs, dict):
        problems.add(_line(value, "inputs"), step, f"{label} inputs must be a mapping")
        return None
    allowed = (*NESTED_KEYS, *KIND_FIELDS[kind])
    for key in value:
        if key not in allowed:
            problems.add(
                _line(value, key),
                step,
                f"unknown key {key!r} in {label}; {_suggest(key, allowed)}"
                f"allowed: {', '.join(allowed)}",
            )
    retry = _retry(value, step, problems)
    return _parse_task_fields(kind, value, inputs, step, problems, retry=retry)


def _parse_batch(
    merged: dict[str, Any],
    body: dict[str, Any],
    inputs: dict[str, Any],
    step: str,
    problems: _Problems,
) -> BatchSpec | None:
    def where(key: str) -> int:
        return _line(inputs if key in inputs else body, key)

    holder = _overlay(body, inputs)
    items = merged.get("items")
    if "items" not in merged:
        problems.add(_line(body), step, "a batch step needs `items` (in inputs)")
    elif not isinstance(items, list | str):
        problems.add(
            where("items"),
            step,
            "items must be a list, a template that gives one, or $(command) for its output lines",
        )
    elif isinstance(items, str) and not (is_template(items) or is_command(items)):
        problems.add(
            where("items"),
            step,
            f"items {items!r:.60} is neither a list, a template nor $(command)",
        )
    raw_task = merged.get("task")
    if raw_task is None:
        problems.add(_line(body), step, "a batch step needs `task:` (what to run for each item)")
        return None
    task = _parse_nested(raw_task, where("task"), "the batch task", step, problems)
    handler = None
    if merged.get("on_item_error") is not None:
        handler = _parse_nested(
            merged["on_item_error"], where("on_item_error"), "on_item_error", step, problems
        )
    if task is None:
        return None
    if task.retry is None:
        task = replace(task, retry=_retry(body, step, problems))
    return BatchSpec(
        items=items,
        task=task,
        batch_size=_positive(holder, "batch_size", step, problems),
        parallel=_flag(holder, "parallel", step, problems),
        max_parallel=_positive(holder, "max_parallel", step, problems),
        continue_on_error=_flag(holder, "continue_on_error", step, problems),
        on_item_error=handler,
        items_line=where("items"),
    )


def _overlay(under: dict[str, Any], over: dict[str, Any]) -> YamlMap:
    """``over`` on top of ``under``, keeping each key's line."""
    merged = YamlMap({**under, **over})
    merged.line = _line(under)
    merged.key_lines = {k: _line(over if k in over else under, k) for k in merged}
    return merged


def is_command(value: Any) -> bool:
    """True for an ``items: $(command)`` field as written in the file."""
    if not isinstance(value, str):
        return False
    stripped = value.strip()
    return stripped.startswith("$(") and stripped.endswith(")")


def _flag(holder: dict[str, Any], key: str, step: str, problems: _Problems) -> bool:
    value = holder.get(key, False)
    if not isinstance(value, bool):
        problems.add(_line(holder, key), step, f"{key} must be true or false, not {value!r}")
        return False
    return value


def _positive(holder: dict[str, Any], key: str, step: str, problems: _Problems) -> int | None:
    value = holder.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        problems.add(_line(holder, key), step, f"{key} must be a whole number >= 1, not {value!r}")
        return None
    return value


def _retry(holder: dict[str, Any], step: str, problems: _Problems) -> RetryPolicy | None:
    raw = holder.get("retry")
    if raw is None:
        return None
    line = _line(holder, "retry")
    if not isinstance(raw, dict):
        problems.add(line, step, "retry must be a mapping: {max_attempts: N, delay: S, backoff: F}")
        return None
    for key in raw:
        if key not in RETRY_KEYS:
            problems.add(
                _line(raw, key),
                step,
                f"unknown retry key {key!r}; {_suggest(key, RETRY_KEYS)}allowed: "
                f"{', '.join(RETRY_KEYS)}",
            )
    attempts = raw.get("max_attempts", 1)
    delay = raw.get("delay", 0)
    backoff = raw.get("backoff", 1)
    ok = True
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        problems.add(
            _line(raw, "max_attempts"), step, "retry.max_attempts must be a whole number >= 1"
        )
        ok = False
    for key, value, low in (("delay", delay, 0), ("backoff", backoff, 1)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
            problems.add(_line(raw, key), step, f"retry.{key} must be a number >= {low}")
            ok = False
    return RetryPolicy(int(attempts), float(delay), float(backoff)) if ok else None


# -- templates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    """A templated value somewhere in a step, and the names it may use."""

    step: StepSpec
    label: str
    value: str
    line: int
    item: bool
    error: bool


def _strings(value: Any, label: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        if is_template(value):
            yield label, value
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{label}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{label}.{k}")


def _task_fields(step: StepSpec, task: TaskSpec, prefix: str, item: bool, error: bool):
    for key, value in task.fields.items():
        for label, text in _strings(value, f"{prefix}{key}"):
            yield _Field(step, label, text, task.field_lines.get(key, task.line), item, error)


def _tasks(step: StepSpec) -> list[TaskSpec]:
    if step.batch is not None:
        return [t for t in (step.batch.task, step.batch.on_item_error) if t is not None]
    return [step.task] if step.task is not None else []


def code_refs(code: str, root: str) -> set[str] | None:
    """The keys python ``code`` reads from ``root`` (``steps`` or ``params``) as
    ``root['x']`` or ``root.x``; None when it uses ``root`` any other way (passes it
    on, loops over it, calls its methods), so that any key may be read."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    refs: set[str] = set()
    covered: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Subscript | ast.Attribute):
            continue
        if not (isinstance(node.value, ast.Name) and node.value.id == root):
            continue
        if isinstance(node, ast.Attribute) and not hasattr(dict, node.attr):
            refs.add(node.attr)
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            refs.add(node.slice.value)
        else:
            continue
        covered.add(id(node.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == root and id(node) not in covered:
            return None
    return refs


def code_step_refs(code: str) -> set[str]:
    """The step names python ``code`` reads as ``steps['x']`` or ``steps.x``."""
    return code_refs(code, "steps") or set()


def step_dependencies(spec: WorkflowSpec) -> dict[str, frozenset[str]]:
    """For each step, the earlier steps whose results it uses: through ``steps.X``
    or an ``outputs:`` name in its templates, or ``steps`` in its code (all earlier
    steps when it uses ``steps`` in a way that does not name them)."""
    outputs = {s.outputs: s.name for s in spec.steps if s.outputs}
    deps: dict[str, frozenset[str]] = {}
    for step in spec.steps:
        earlier = {s.name for s in spec.steps if s.position < step.position}
        found: set[str] = set()
        for task in _tasks(step):
            if task.code is not None:
                refs = code_refs(task.code, "steps")
                found |= earlier if refs is None else refs
        for f in template_fields(step):
            try:
                names = analyse(f.value)
            except TemplateError:
                continue
            if "steps" in names.dynamic:
                found |= earlier
            found |= names.steps
            found |= {outputs[name] for name in names.free if name in outputs}
        deps[step.name] = frozenset(found & earlier)
    return deps


def template_fields(step: StepSpec) -> Iterator[_Field]:
    """Every templated value of ``step``, with whether ``item``/``error`` are defined there."""
    if step.for_each is not None:
        for label, text in _strings(step.for_each, "for_each"):
            yield _Field(step, label, text, step.for_each_line or step.line, False, False)
    if step.batch is not None:
        for label, text in _strings(step.batch.items, "items"):
            yield _Field(step, label, text, step.batch.items_line or step.line, False, False)
        yield from _task_fields(step, step.batch.task, "task.", True, False)
        if step.batch.on_item_error is not None:
            yield from _task_fields(step, step.batch.on_item_error, "on_item_error.", True, True)
    if step.task is not None:
        yield from _task_fields(step, step.task, "", step.for_each is not None, False)


def _adder(problems: _Problems, f: _Field) -> Callable[[str], None]:
    def add(text: str) -> None:
        problems.add(f.line, f.step.name, f"field {f.label!r}: {text}")

    return add


def _check_templates(
    spec: WorkflowSpec,
    problems: _Problems,
    names: set[str] | None,
    environ: dict[str, str] | None = None,
    unread: frozenset[str] = frozenset(),
) -> None:
    order = {s.name: s.position for s in spec.steps}
    outputs = {s.outputs: s for s in spec.steps if s.outputs}
    for step in spec.steps:
        for task in _tasks(step):
            if task.code is None:
                continue
            read = code_refs(task.code, "params") if names is not None else None
            for key in sorted((read or set()) - (names or set())):
                problems.add(
                    task.code_line,
                    step.name,
                    f"code uses params[{key!r}], but there is no param {key!r} "
                    f"({_suggest(key, sorted(names or ()))}pass it with --param {key}=VALUE "
                    "or declare it under `params:`)",
                )
            for ref in sorted(code_step_refs(task.code) - unread):
                if ref not in order or order[ref] >= step.position:
                    problems.add(
                        task.code_line,
                        step.name,
                        f"code uses steps[{ref!r}], but "
                        + ("no step has that name" if ref not in order else "that step runs later")
                        + "; a step can only use the steps before it",
                    )
        for f in template_fields(step):
            add = _adder(problems, f)
            try:
                found = analyse(f.value)
            except TemplateError as exc:
                add(str(exc))
                continue
            for ref in sorted(found.steps - unread):
                if ref not in order:
                    add(f"refers to steps.{ref}, but there is no step {ref!r} "
                        f"({_suggest(ref, list(order))}steps: {', '.join(order)})")  # fmt: skip
                elif order[ref] >= step.position:
                    add(f"refers to steps.{ref}, which "
                        f"{'is this step' if ref == step.name else 'runs later'}; a step can only "
                        "use the steps before it")  # fmt: skip
            for name in sorted(found.free):
                if name in ("item", "index") and not f.item:
                    add(f"uses {name!r}, which is only defined in for_each steps, batch tasks "
                        "and on_item_error")  # fmt: skip
                elif name == "error" and not f.error:
                    add("uses 'error', which is only defined in on_item_error")
                elif name in RESERVED_NAMES:
                    continue
                elif name in outputs and outputs[name].position >= step.position:
                    add(f"uses {name!r}, the output of step {outputs[name].name!r}, which does not "
                        "run before this step")  # fmt: skip
                elif names is not None and name not in names and name not in outputs:
                    add(f"undefined template name {name!r}: pass it with --param {name}=VALUE, "
                        "declare it under `params:`, or name a step's `outputs:`")  # fmt: skip
            if names is not None:
                for key in sorted(found.params - names):
                    add(f"uses params.{key}, but there is no param {key!r} "
                        f"({_suggest(key, sorted(names))}pass it with --param {key}=VALUE or "
                        "declare it under `params:`)")  # fmt: skip
            if environ is not None:
                for var in sorted(found.env):
                    if var not in environ:
                        add(f"uses env.{var}, but the environment variable {var} is not set")


def check_names(spec: WorkflowSpec, params: dict[str, Any], environ: dict[str, str]) -> None:
    """Check every free template name against ``params`` (with the file's defaults),
    the steps' outputs and ``environ``; raise WorkflowValidationError if any is undefined."""
    problems = _Problems(spec.source)
    for name in params:
        if name in RESERVED_NAMES or not str(name).isidentifier():
            problems.add(0, None, f"param name {name!r} is reserved or not an identifier")
    _check_templates(spec, problems, names=set(params), environ=environ)
    problems.raise_any()
