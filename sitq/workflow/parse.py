"""Reading a workflow file into a :class:`~sitq.workflow.spec.WorkflowSpec`.

:func:`parse_workflow` checks the structure (keys, types, step kinds and their
fields, retries, names) and the templates
(:func:`~sitq.workflow.spec.check_templates`), and lists every problem found at
once, each one line naming the file, the line and the step.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sitq.workflow.kinds import OPERATIONS, RetryPolicy, compile_code
from sitq.workflow.loader import YamlMap, check_size, load_yaml
from sitq.workflow.names import (
    CODE_NAMES,
    RESERVED_NAMES,
    Problems,
    is_name,
    is_number,
    is_whole,
    line_of,
    suggest,
)
from sitq.workflow.spec import (
    BatchSpec,
    StepSpec,
    TaskSpec,
    WorkflowSpec,
    check_templates,
    is_command,
)
from sitq.workflow.templates import is_template

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
#: The step kinds that run per item ("batch" is a step shape, not an item kind).
ITEM_KINDS = tuple(KIND_FIELDS)
REQUIRED_FIELDS = {"shell": "command", "http_request": "url", "echo": "message"}
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
RETRY_KEYS = ("max_attempts", "delay", "backoff")


def _a(kind: str) -> str:
    """``kind`` with its article: "an echo", "a shell"."""
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"


def parse_workflow(text: str, source: str = "<string>") -> WorkflowSpec:
    """Check a workflow's text and build its model; raise WorkflowValidationError
    listing every problem."""
    check_size(len(text.encode(errors="replace")), source)
    doc = load_yaml(text, source)
    problems = Problems(source)
    if not isinstance(doc, dict):
        problems.add(line_of(doc), None, "a workflow is a mapping with a `steps:` key")
        problems.raise_any()
    problems.unknown_keys(doc, TOP_KEYS, None, "top-level key")
    params = doc.get("params") or {}
    if not isinstance(params, dict):
        problems.add(line_of(doc, "params"), None, "params must be a mapping of name: default")
        params = {}
    for name in params:
        if not is_name(name):
            problems.add(
                line_of(params, name), None, f"param name {name!r} is reserved or not an identifier"
            )
    named = _named_steps(doc, problems)
    if not named and not problems.lines:
        problems.add(line_of(doc, "steps"), None, "the workflow has no steps")
    steps: list[StepSpec] = []
    outputs: dict[str, str] = {}
    for position, (name, body, line) in enumerate(named):
        step = _parse_step(name, body, line, position, problems)
        if step is None:
            continue
        if step.outputs is not None:
            where, other = line_of(body, "outputs"), outputs.get(step.outputs)
            if other is not None:
                problems.add(
                    where, name, f"outputs name {step.outputs!r} is already used by step {other!r}"
                )
            elif step.outputs in params:
                problems.add(where, name, f"outputs {step.outputs!r} is also a param name")
            outputs[step.outputs] = name
        steps.append(step)
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
    unread = frozenset(name for name, _, _ in named) - {step.name for step in steps}
    check_templates(spec, problems, unread=unread)
    problems.raise_any()
    return spec


def _named_steps(doc: dict[str, Any], problems: Problems) -> list[tuple[str, Any, int]]:
    """Each step's (name, body, line), from a mapping or a list of steps."""
    raw = doc.get("steps")
    if isinstance(raw, dict):
        return [(str(name), body, line_of(raw, name)) for name, body in raw.items()]
    if not isinstance(raw, list):
        problems.add(
            line_of(doc, "steps"),
            None,
            "`steps:` must be a mapping of name: step, or a list of steps with `name:`",
        )
        return []
    named: list[tuple[str, Any, int]] = []
    lines = getattr(raw, "item_lines", [])
    seen: dict[str, int] = {}
    for i, body in enumerate(raw):
        line = lines[i] if i < len(lines) else line_of(raw)
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            problems.add(line, None, f"step {i + 1} of the list has no `name:`")
        elif name in seen:
            problems.add(line, name, f"a step of this name is already on line {seen[name]}")
        else:
            seen[name] = line
            named.append((name, body, line))
    return named


def _kind_of(body: dict[str, Any], step: str, problems: Problems) -> str | None:
    kind = body.get("type")
    task = body.get("task")
    if kind is None and isinstance(task, str):
        kind = task
    elif isinstance(task, str) and task != kind:
        problems.add(line_of(body, "task"), step, f"type {kind!r} and task {task!r} disagree")
        return None
    allowed = (*ITEM_KINDS, "batch")
    if kind is None:
        # A misspelt `type:` or `task:` (`taks: python`) is the likely cause: name it.
        near = [k for k in body if k not in ("type", "task") and suggest(k, ("type", "task"))]
        hint = f" (key {near[0]!r}: {suggest(near[0], ('type', 'task')).strip()})" if near else ""
        problems.add(
            line_of(body, near[0]) if near else line_of(body),
            step,
            f"no step kind: add `type:` (one of {', '.join(ITEM_KINDS)}) or `task: batch`{hint}",
        )
        return None
    if kind not in allowed:
        problems.add(
            line_of(body, "type" if "type" in body else "task"),
            step,
            f"unknown step kind {kind!r}; {suggest(kind, allowed)}use one of {', '.join(allowed)}",
        )
        return None
    return kind


def _overlay(under: dict[str, Any], over: dict[str, Any]) -> YamlMap:
    """``over`` on top of ``under``, keeping each key's line."""
    merged = YamlMap({**under, **over})
    merged.line = line_of(under)
    merged.key_lines = {k: line_of(over if k in over else under, k) for k in merged}
    return merged


def _merged_fields(
    body: dict[str, Any], inputs: dict[str, Any], names: tuple[str, ...], step: str, p: Problems
) -> dict[str, Any]:
    """The fields ``names`` given on the step or in its inputs (not both)."""
    merged: dict[str, Any] = {}
    for key in names:
        if key in body and key in inputs:
            p.add(line_of(inputs, key), step, f"{key!r} is given both on the step and in inputs")
        if key in inputs or key in body:
            merged[key] = inputs[key] if key in inputs else body[key]
    return merged


def _parse_step(
    name: str, body: Any, line: int, position: int, problems: Problems
) -> StepSpec | None:
    if not isinstance(body, dict):
        problems.add(line, name, "a step must be a mapping (type:, inputs:, ...)")
        return None
    kind = _kind_of(body, name, problems)
    if kind is None:
        return None
    inputs = body.get("inputs") or {}
    if not isinstance(inputs, dict):
        problems.add(line_of(body, "inputs"), name, "inputs must be a mapping")
        return None
    kind_fields = BATCH_FIELDS if kind == "batch" else KIND_FIELDS[kind]
    problems.unknown_keys(body, (*STEP_KEYS, *kind_fields), name, "key", f" for {_a(kind)} step")
    retry = _retry(body, name, problems)
    outputs = body.get("outputs")
    if outputs is not None and not (isinstance(outputs, str) and is_name(outputs)):
        problems.add(
            line_of(body, "outputs"),
            name,
            "outputs must be a name (an identifier other than "
            f"{', '.join(sorted(RESERVED_NAMES))})",
        )
        outputs = None
    for_each = body.get("for_each")
    if "for_each" in body and not (isinstance(for_each, list) or is_template(for_each)):
        problems.add(
            line_of(body, "for_each"),
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
        "for_each_line": line_of(body, "for_each"),
        "retry": retry,
        "outputs": outputs,
        "continue_on_error": _flag(body, "continue_on_error", name, problems),
        "max_parallel": _positive(body, "max_parallel", name, problems),
    }
    if kind == "batch":
        # `task: batch` on the step names the kind; the batch's own task is in inputs.
        own = {k: v for k, v in body.items() if not (k == "task" and isinstance(v, str))}
        merged = _merged_fields(own, inputs, BATCH_FIELDS, name, problems)
        problems.unknown_keys(inputs, BATCH_FIELDS, name, "batch input")
        batch = _parse_batch(merged, _overlay(body, inputs), name, problems)
        if batch is None:
            return None
        common["continue_on_error"] = batch.continue_on_error or common["continue_on_error"]
        return StepSpec(batch=batch, **common)
    task = _parse_task(kind, body, inputs, name, problems, retry=None)
    return StepSpec(task=task, **common) if task is not None else None


def _parse_task(
    kind: str,
    body: dict[str, Any],
    inputs: dict[str, Any],
    step: str,
    problems: Problems,
    retry: RetryPolicy | None,
) -> TaskSpec | None:
    fields = _merged_fields(body, inputs, KIND_FIELDS[kind], step, problems)
    holder = _overlay(body, inputs)
    code: str | None = None
    code_line = 0
    if kind == "python":
        variables = {k: v for k, v in inputs.items() if k not in KIND_FIELDS["python"]}
        for key in variables:
            if not str(key).isidentifier():
                problems.add(
                    line_of(inputs, key), step, f"python input {key!r} is not a valid variable name"
                )
        code = fields.pop("code", None)
        if code is not None:
            source = inputs if "code" in inputs else body
            code_line = getattr(source, "text_lines", {}).get("code", line_of(holder, "code") + 1)
            if not isinstance(code, str):
                problems.add(line_of(holder, "code"), step, "code must be text (use `code: |`)")
                code = None
        operation = fields.get("operation")
        if code is None and operation is None:
            problems.add(
                line_of(body),
                step,
                f"a python step needs `code` (or `operation`: one of {', '.join(OPERATIONS)})",
            )
        elif code is None and operation not in OPERATIONS and not is_template(operation):
            problems.add(
                line_of(holder, "operation"),
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
        problems.unknown_keys(inputs, KIND_FIELDS[kind], step, "input", f" for {_a(kind)} step")
        required = REQUIRED_FIELDS.get(kind)
        if required and required not in fields:
            problems.add(line_of(body), step, f"{_a(kind)} step needs `{required}`")
        _check_field_types(fields, holder, step, problems)
    return TaskSpec(
        kind=kind,
        fields=fields,
        line=line_of(body),
        code=code,
        code_line=code_line,
        retry=retry,
        field_lines={k: line_of(holder, k) for k in fields},
    )


def _check_field_types(
    fields: dict[str, Any], holder: YamlMap, step: str, problems: Problems
) -> None:
    for key, value in fields.items():
        where = line_of(holder, key)
        if is_template(value):
            continue
        if key in ("command", "url", "cwd") and not isinstance(value, str):
            problems.add(where, step, f"{key} must be text, not {type(value).__name__}")
        elif key in ("headers", "env") and not isinstance(value, dict):
            problems.add(where, step, f"{key} must be a mapping of name: value")
        elif key == "timeout" and not (is_number(value) and value > 0):
            problems.add(where, step, "timeout must be a positive number of seconds")
        elif key == "method" and str(value).upper() not in HTTP_METHODS:
            problems.add(where, step, f"unknown HTTP method {value!r}; use one of {HTTP_METHODS}")


def _parse_nested(
    value: Any, line: int, label: str, step: str, problems: Problems
) -> TaskSpec | None:
    """A batch's ``task`` or ``on_item_error``: a mapping with its own kind."""
    if not isinstance(value, dict):
        problems.add(line, step, f"{label} must be a mapping with `type:` and its fields")
        return None
    kind = _kind_of(value, step, problems)
    if kind is None:
        return None
    if kind == "batch":
        problems.add(line_of(value), step, f"{label} cannot itself be a batch")
        return None
    inputs = value.get("inputs") or {}
    if not isinstance(inputs, dict):
        problems.add(line_of(value, "inputs"), step, f"{label} inputs must be a mapping")
        return None
    problems.unknown_keys(value, (*NESTED_KEYS, *KIND_FIELDS[kind]), step, "key", f" in {label}")
    retry = _retry(value, step, problems)
    return _parse_task(kind, value, inputs, step, problems, retry=retry)


def _parse_batch(
    merged: dict[str, Any], holder: YamlMap, step: str, problems: Problems
) -> BatchSpec | None:
    items = merged.get("items")
    if "items" not in merged:
        problems.add(holder.line, step, "a batch step needs `items` (in inputs)")
    elif not isinstance(items, list | str):
        problems.add(
            line_of(holder, "items"),
            step,
            "items must be a list, a template that gives one, or $(command) for its output lines",
        )
    elif isinstance(items, str) and not (is_template(items) or is_command(items)):
        problems.add(
            line_of(holder, "items"),
            step,
            f"items {items!r:.60} is neither a list, a template nor $(command)",
        )
    raw_task = merged.get("task")
    if raw_task is None:
        problems.add(holder.line, step, "a batch step needs `task:` (what to run for each item)")
        return None
    task = _parse_nested(raw_task, line_of(holder, "task"), "the batch task", step, problems)
    handler = None
    if merged.get("on_item_error") is not None:
        where = line_of(holder, "on_item_error")
        handler = _parse_nested(merged["on_item_error"], where, "on_item_error", step, problems)
    if task is None:
        return None
    if task.retry is None:
        task = replace(task, retry=_retry(holder, step, problems))
    return BatchSpec(
        items=items,
        task=task,
        batch_size=_positive(holder, "batch_size", step, problems),
        parallel=_flag(holder, "parallel", step, problems),
        max_parallel=_positive(holder, "max_parallel", step, problems),
        continue_on_error=_flag(holder, "continue_on_error", step, problems),
        on_item_error=handler,
        items_line=line_of(holder, "items"),
    )


def _flag(holder: dict[str, Any], key: str, step: str, problems: Problems) -> bool:
    value = holder.get(key, False)
    if not isinstance(value, bool):
        problems.add(line_of(holder, key), step, f"{key} must be true or false, not {value!r}")
        return False
    return value


def _positive(holder: dict[str, Any], key: str, step: str, problems: Problems) -> int | None:
    value = holder.get(key)
    if value is None or is_whole(value):
        return value
    problems.add(line_of(holder, key), step, f"{key} must be a whole number >= 1, not {value!r}")
    return None


def _retry(holder: dict[str, Any], step: str, problems: Problems) -> RetryPolicy | None:
    raw = holder.get("retry")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.add(
            line_of(holder, "retry"),
            step,
            "retry must be a mapping: {max_attempts: N, delay: S, backoff: F}",
        )
        return None
    problems.unknown_keys(raw, RETRY_KEYS, step, "retry key")
    attempts = raw.get("max_attempts", 1)
    delay = raw.get("delay", 0)
    backoff = raw.get("backoff", 1)
    ok = is_whole(attempts)
    if not ok:
        problems.add(
            line_of(raw, "max_attempts"), step, "retry.max_attempts must be a whole number >= 1"
        )
    for key, value, low in (("delay", delay, 0), ("backoff", backoff, 1)):
        if not (is_number(value) and value >= low):
            problems.add(line_of(raw, key), step, f"retry.{key} must be a number >= {low}")
            ok = False
    return RetryPolicy(int(attempts), float(delay), float(backoff)) if ok else None
