"""Warnings about a valid workflow: things that run, but likely not as meant.

- A shell ``command`` (or an ``items: $(command)``) inserts a ``{{ ... }}`` value
  without ``| quote``: whatever the value holds (an item, a param, an earlier
  step's output) is run by the shell, so ``; rm -rf ~`` in an item is a command.
- A python step's ``code`` holds ``{{ ... }}`` in a string: code is not a
  template, so that text stays as written (read ``item``, ``params['x']``,
  ``steps['y']`` as variables instead).

Each warning is one line naming the file, the line and the step, like a problem
of :class:`~sitq.workflow.errors.WorkflowValidationError`; a run goes ahead.
"""

from __future__ import annotations

import ast
import re

from sitq.workflow.names import Problems
from sitq.workflow.spec import WorkflowSpec, is_command
from sitq.workflow.templates import unquoted_outputs

_TEMPLATE_TEXT = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)


def workflow_warnings(spec: WorkflowSpec) -> list[str]:
    """Every warning about ``spec``, one line each, in step order."""
    found = Problems(spec.source)
    for step in spec.steps:
        if step.batch is not None and is_command(step.batch.items):
            exprs = unquoted_outputs(str(step.batch.items))
            if exprs:
                found.add(step.line, step.name, _unquoted("items", exprs))
        for task in step.tasks:
            command = task.fields.get("command") if task.kind == "shell" else None
            exprs = unquoted_outputs(command) if isinstance(command, str) else []
            if exprs:
                line = task.field_lines.get("command", task.line)
                found.add(line, step.name, _unquoted("command", exprs))
            for line in _templated_strings(task.code) if task.code is not None else ():
                found.add(task.code_line + line - 1, step.name, _CODE_TEMPLATE)
    return found.lines


def _unquoted(field: str, exprs: list[str]) -> str:
    shown = ", ".join(dict.fromkeys(exprs))
    inner = exprs[0][2:-2].strip()
    return (
        f"field {field!r} inserts {shown} into a shell command unquoted: a value holding "
        f"shell syntax (; $(...) quotes) runs as commands; write {{{{ {inner} | quote }}}}"
    )


_CODE_TEMPLATE = (
    "python `code` is not a template: `{{ ... }}` in it stays literal text; use the "
    "variables item, index, params['x'], steps['y'] or env.X instead"
)


def _templated_strings(code: str) -> list[int]:
    """Lines (within ``code``) of string literals holding ``{{ ... }}`` or ``{% %}``.
    An f-string's ``{{`` is an escaped brace, not a template: its literal parts,
    as parsed, hold single braces and are not reported."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []  # reported by validation
    lines = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _TEMPLATE_TEXT.search(node.value)
        ):
            lines.append(node.lineno)
    return sorted(set(lines))
