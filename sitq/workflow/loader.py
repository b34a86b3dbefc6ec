"""Reading a workflow's YAML, keeping the line of every mapping and key for errors.

Two things differ from plain ``yaml.safe_load``:

- a value written as a bare template (``items: {{ records }}``) is read as the
  string ``"{{ records }}"``: YAML would otherwise read it as a nested mapping,
  which is never what the author of a workflow meant;
- a key given twice in one mapping is an error rather than silently the last one.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from sitq.workflow.errors import WorkflowValidationError


class YamlMap(dict):
    """A mapping read from YAML, with the line it starts on and each key's line."""

    line: int = 0
    key_lines: dict[Any, int]

    def line_of(self, key: Any) -> int:
        """The line of ``key`` (or of the mapping when the key is absent)."""
        return getattr(self, "key_lines", {}).get(key, self.line)


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


class _LineLoader(yaml.SafeLoader):
    """SafeLoader building YamlMap/YamlList with line numbers."""


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> YamlMap:
    loader.flatten_mapping(node)
    result = YamlMap()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "found a mapping or list where a key was expected; if this is a template, "
                'quote it: key: "{{ ... }}"',
                key_node.start_mark,
            ) from None
        if key in result:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} is given twice in this mapping (first on line "
                f"{result.key_lines[key]}); keep one",
                key_node.start_mark,
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


def _construct_list(loader: _LineLoader, node: yaml.SequenceNode) -> YamlList:
    result = YamlList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_list)


def load_yaml(text: str, source: str) -> Any:
    """Parse a workflow's text; a YAML error becomes a WorkflowValidationError that
    names ``source`` and the line."""
    try:
        return yaml.load(quote_bare_templates(text), Loader=_LineLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = exc.problem or str(exc)
        if exc.context and exc.context not in problem:
            problem = f"{exc.context}: {problem}"
        raise WorkflowValidationError([f"{source}{line}: invalid YAML: {problem}"]) from None
    except yaml.YAMLError as exc:
        raise WorkflowValidationError([f"{source}: invalid YAML: {exc}"]) from None
