"""Reading a workflow's YAML, keeping the line of every mapping and key for errors.

Three things differ from plain ``yaml.safe_load``:

- a value written as a bare template (``items: {{ records }}``) is read as the
  string ``"{{ records }}"``: YAML would otherwise read it as a nested mapping,
  which is never what the author of a workflow meant;
- a key given twice in one mapping is an error rather than silently the last one;
- what a document may cost is bounded: a workflow file is at most MAX_BYTES
  (``$SITQ_WORKFLOW_MAX_BYTES`` raises it), and aliases (``*name``) may add at
  most MAX_ALIAS_NODES nodes to what the text holds, so a kilobyte of nested
  aliases (a "billion laughs") is refused before anything walks the values.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from sitq.workflow.errors import WorkflowValidationError
from sitq.workflow.names import env_number

#: The largest workflow file read by default, in bytes (``$SITQ_WORKFLOW_MAX_BYTES``).
MAX_BYTES = 1024 * 1024
#: The most nodes aliases may add to a document once expanded.
MAX_ALIAS_NODES = 100_000
#: The deepest nesting of lists and mappings.
MAX_DEPTH = 200


def check_size(size: int, source: str) -> None:
    """Refuse a workflow of ``size`` bytes over the limit (``$SITQ_WORKFLOW_MAX_BYTES``,
    else MAX_BYTES), saying how to go on."""
    limit = env_number("SITQ_WORKFLOW_MAX_BYTES", MAX_BYTES, 1, "bytes", whole=True)
    if size > limit:
        raise WorkflowValidationError(
            [
                f"{source}: the workflow is {size:,} bytes, more than the {limit:,} sitq reads; "
                "keep large data out of the workflow file (pass it with --param NAME=@FILE), "
                "or raise the limit with $SITQ_WORKFLOW_MAX_BYTES"
            ]
        )


class YamlMap(dict):
    """A mapping read from YAML, with the line it starts on and each key's line
    (see :func:`sitq.workflow.names.line_of`)."""

    line: int = 0
    key_lines: dict[Any, int]
    #: The line each key's text starts on: a block scalar's (`key: |`) on the next.
    text_lines: dict[Any, int]


class YamlList(list):
    """A sequence read from YAML, with its line and each element's line."""

    line: int = 0
    item_lines: list[int]


# A line whose value is one bare {{ ... }} template: `key: {{ x }}` or `- {{ x }}`.
_BARE_TEMPLATE = re.compile(
    r"^(?P<lead>\s*(?:-\s+)?(?:[^\s#'\"{\[][^:#]*?:\s+)|\s*-\s+)"
    r"(?P<template>\{\{(?:(?!\}\}).)*\}\})"
    r"(?P<tail>\s*(?:#.*)?)$"
)
# A key introducing a block scalar (`code: |`), whose lines must be left alone.
_BLOCK_SCALAR = re.compile(r"^(?P<indent>\s*)(?:-\s+)?[^#]*?:\s+[|>][-+0-9]*\s*(?:#.*)?$")


def quote_bare_templates(text: str) -> str:
    """Quote values that are one bare ``{{ ... }}`` template, leaving block scalars,
    comments and line numbers as they are."""
    out: list[str] = []
    block_indent: int | None = None
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        indent = len(body) - len(body.lstrip())
        if block_indent is not None:
            if not body.strip() or indent > block_indent:
                out.append(line)
                continue
            block_indent = None
        block = _BLOCK_SCALAR.match(body)
        if block:
            block_indent = len(block.group("indent"))
            out.append(line)
            continue
        match = _BARE_TEMPLATE.match(body)
        if match:
            template = match.group("template").replace("'", "''")
            quoted = f"{match.group('lead')}'{template}'{match.group('tail')}"
            line = quoted + line[len(body) :]
        out.append(line)
    return "".join(out)


#: libyaml's parser when PyYAML has it (several times faster), else the Python one.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _LineLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """SafeLoader building YamlMap/YamlList with line numbers."""


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> YamlMap:
    loader.flatten_mapping(node)
    result = YamlMap()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    result.text_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            problem = key in result and (
                f"key {key!r} is given twice in this mapping (first on line "
                f"{result.key_lines[key]}); keep one"
            )
        except TypeError:  # not hashable
            problem = (
                "found a mapping or list where a key was expected; if this is a template, "
                'quote it: key: "{{ ... }}"'
            )
        if problem:
            raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
        block = isinstance(value_node, yaml.ScalarNode) and value_node.style in ("|", ">")
        result.text_lines[key] = value_node.start_mark.line + (2 if block else 1)
    return result


def _construct_list(loader: _LineLoader, node: yaml.SequenceNode) -> YamlList:
    result = YamlList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_list)


def _check_expansion(root: yaml.Node, source: str) -> None:
    """Refuse a document whose aliases expand it by more than MAX_ALIAS_NODES nodes,
    that refers to itself, or nests deeper than MAX_DEPTH (walked without recursion;
    each distinct node once, as an alias is the very node of its anchor)."""
    sizes: dict[int, int] = {}  # expanded size of each node done
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 0, False)]
    on_path: set[int] = set()

    def refuse(node: yaml.Node, what: str) -> WorkflowValidationError:
        line = node.start_mark.line + 1
        return WorkflowValidationError([f"{source}:{line}: invalid YAML: {what}"])

    while stack:
        node, depth, children_done = stack.pop()
        key = id(node)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        if children_done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise refuse(node, "an alias refers to the list or mapping it is in")
        if depth > MAX_DEPTH:
            raise refuse(node, f"lists and mappings nest more than {MAX_DEPTH} deep")
        on_path.add(key)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children)
    expanded, written = sizes[id(root)], len(sizes)
    if expanded - written > MAX_ALIAS_NODES:
        raise WorkflowValidationError(
            [
                f"{source}: invalid YAML: its aliases (*name) expand it to {expanded:,} "
                f"values from {written:,} written, more than the {MAX_ALIAS_NODES:,} extra "
                "sitq allows; write the values out, or pass large data with --param NAME=@FILE"
            ]
        )


def load_yaml(text: str, source: str, loader: type[yaml.SafeLoader] | None = None) -> Any:
    """Parse a workflow's text; a YAML error (or a document whose aliases expand too
    far) becomes a WorkflowValidationError that names ``source`` and the line.
    ``loader`` (plain ``yaml.SafeLoader`` for data) replaces the workflow loader."""
    if loader is None:
        text = quote_bare_templates(text)
    parser = (loader or _LineLoader)(text)
    try:
        root = parser.get_single_node()
        if root is None:
            return None
        _check_expansion(root, source)
        return parser.construct_document(root)
    except RecursionError:
        raise WorkflowValidationError(
            [f"{source}: invalid YAML: lists and mappings nest too deeply"]
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = exc.problem or str(exc)
        if exc.context and exc.context not in problem:
            problem = f"{exc.context}: {problem}"
        raise WorkflowValidationError([f"{source}{line}: invalid YAML: {problem}"]) from None
    except yaml.YAMLError as exc:
        raise WorkflowValidationError([f"{source}: invalid YAML: {exc}"]) from None
    finally:
        parser.dispose()
