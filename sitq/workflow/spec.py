"""A workflow file as a checked model, and what its templates and code refer to.

:func:`sitq.workflow.parse.parse_workflow` builds a :class:`WorkflowSpec` (checking
the structure); here :func:`check_templates` checks the references of its
templates and python code (to other steps, and where ``item`` and ``error`` may
appear), and :func:`check_names` their free names against a run's params, the
steps' ``outputs`` and the environment. Each problem is one line naming the file,
the line and the step.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sitq.workflow.errors import TemplateError
from sitq.workflow.kinds import RetryPolicy
from sitq.workflow.names import RESERVED_NAMES, Problems, is_name, suggest
from sitq.workflow.templates import analyse, is_template


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
    def tasks(self) -> list[TaskSpec]:
        """Every task of the step: its own, or a batch's task and ``on_item_error``."""
        if self.batch is not None:
            return [t for t in (self.batch.task, self.batch.on_item_error) if t is not None]
        return [self.task] if self.task is not None else []

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


def is_command(value: Any) -> bool:
    """True for an ``items: $(command)`` field as written in the file."""
    stripped = value.strip() if isinstance(value, str) else ""
    return stripped.startswith("$(") and stripped.endswith(")")


@dataclass(frozen=True)
class _Field:
    """A templated value somewhere in a step, and the names it may use."""

    step: StepSpec
    label: str
    value: str
    line: int
    item: bool
    error: bool


def template_strings(value: Any, label: str) -> Iterator[tuple[str, str]]:
    """Each template string in ``value`` (recursing into lists and mappings), labelled."""
    if isinstance(value, str):
        if is_template(value):
            yield label, value
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from template_strings(v, f"{label}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from template_strings(v, f"{label}.{k}")


def template_fields(step: StepSpec) -> Iterator[_Field]:
    """Every templated value of ``step``, with whether ``item``/``error`` are defined there."""
    values = [(step.for_each, "for_each", step.for_each_line or step.line, False, False)]
    tasks = [(step.task, "", step.for_each is not None, False)]
    if step.batch is not None:
        values.append((step.batch.items, "items", step.batch.items_line or step.line, False, False))
        tasks = [(step.batch.task, "task.", True, False)]
        tasks.append((step.batch.on_item_error, "on_item_error.", True, True))
    for task, prefix, item, error in tasks:
        if task is not None:
            for key, value in task.fields.items():
                line = task.field_lines.get(key, task.line)
                values.append((value, prefix + key, line, item, error))
    for value, label, line, item, error in values:
        for where, text in template_strings(value, label):
            yield _Field(step, where, text, line, item, error)


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


def step_dependencies(spec: WorkflowSpec) -> dict[str, frozenset[str]]:
    """For each step, the earlier steps whose results it uses: through ``steps.X``
    or an ``outputs:`` name in its templates, or ``steps`` in its code (all earlier
    steps when it uses ``steps`` in a way that does not name them)."""
    outputs = {s.outputs: s.name for s in spec.steps if s.outputs}
    deps: dict[str, frozenset[str]] = {}
    for step in spec.steps:
        earlier = {s.name for s in spec.steps if s.position < step.position}
        found: set[str] = set()
        for task in step.tasks:
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


def check_templates(
    spec: WorkflowSpec,
    problems: Problems,
    names: set[str] | None = None,
    environ: dict[str, str] | None = None,
    unread: frozenset[str] = frozenset(),
) -> None:
    """Add the problems of every template and python ``code`` of ``spec``: the steps
    they refer to (``unread``: steps that exist but could not be read), where ``item``
    and ``error`` appear and, given ``names`` (a run's params) and ``environ``, each
    free name, param and environment variable."""
    order = {s.name: s.position for s in spec.steps}
    outputs = {s.outputs: s for s in spec.steps if s.outputs}

    def no_param(key: str) -> str:
        return (
            f"there is no param {key!r} ({suggest(key, sorted(names or ()))}pass it with "
            f"--param {key}=VALUE or declare it under `params:`)"
        )

    for step in spec.steps:
        for task in step.tasks:
            if task.code is None:
                continue
            read = code_refs(task.code, "params") if names is not None else None
            for key in sorted((read or set()) - (names or set())):
                problems.add(
                    task.code_line, step.name, f"code uses params[{key!r}], but {no_param(key)}"
                )
            for ref in sorted((code_refs(task.code, "steps") or set()) - unread):
                if ref not in order or order[ref] >= step.position:
                    problems.add(
                        task.code_line,
                        step.name,
                        f"code uses steps[{ref!r}], but "
                        + ("no step has that name" if ref not in order else "that step runs later")
                        + "; a step can only use the steps before it",
                    )
        for f in template_fields(step):

            def add(text: str, f: _Field = f) -> None:
                problems.add(f.line, f.step.name, f"field {f.label!r}: {text}")

            try:
                found = analyse(f.value)
            except TemplateError as exc:
                add(str(exc))
                continue
            for ref in sorted(found.steps - unread):
                if ref not in order:
                    add(f"refers to steps.{ref}, but there is no step {ref!r} "
                        f"({suggest(ref, order)}steps: {', '.join(order)})")  # fmt: skip
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
            for key in sorted(found.params - names) if names is not None else ():
                add(f"uses params.{key}, but {no_param(key)}")
            for var in sorted(found.env - set(environ)) if environ is not None else ():
                add(f"uses env.{var}, but the environment variable {var} is not set")


def check_names(spec: WorkflowSpec, params: dict[str, Any], environ: dict[str, str]) -> None:
    """Check every free template name against ``params`` (with the file's defaults),
    the steps' outputs and ``environ``; raise WorkflowValidationError if any is undefined."""
    problems = Problems(spec.source)
    for name in params:
        if not is_name(name):
            problems.add(0, None, f"param name {name!r} is reserved or not an identifier")
    check_templates(spec, problems, names=set(params), environ=environ)
    problems.raise_any()
