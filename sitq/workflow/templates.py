"""Jinja2 templates in workflow fields: undefined names are errors.

A field that is exactly one ``{{ expression }}`` renders to the expression's
value itself (a list stays a list, so ``for_each: "{{ steps.a.result }}"``
works); any other text renders to a string. Strings without ``{{``/``{%`` are
left as they are.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeGuard

import jinja2
from jinja2 import meta, nodes

from sitq.workflow.errors import TemplateError

_ONE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}|\{\{|\{%).)*)\}\}\s*$", re.S)

_ENV = jinja2.Environment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
)
# `{{ item | quote }}` makes a value safe to paste into a shell command.
_ENV.filters["quote"] = lambda value: shlex.quote(str(value))
# Plain JSON (Jinja's own tojson escapes HTML characters).
_ENV.filters["json"] = json.dumps

#: Names Jinja itself provides.
JINJA_GLOBALS = frozenset(_ENV.globals)


def is_template(value: Any) -> TypeGuard[str]:
    """True if ``value`` is a string holding template syntax."""
    return isinstance(value, str) and ("{{" in value or "{%" in value)


@lru_cache(maxsize=1024)
def _compiled_expression(expr: str) -> Any:
    return _ENV.compile_expression(expr, undefined_to_none=False)


@lru_cache(maxsize=1024)
def _compiled_template(text: str) -> jinja2.Template:
    return _ENV.from_string(text)


def render(value: Any, context: Mapping[str, Any], where: str) -> Any:
    """Render every template in ``value`` (recursing into lists and mappings).

    ``where`` ("step 'x', field 'url'") prefixes any error.
    """
    if isinstance(value, str):
        return _render_text(value, context, where) if is_template(value) else value
    if isinstance(value, list):
        return [render(v, context, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: render(v, context, f"{where}.{k}") for k, v in value.items()}
    return value


def _render_text(text: str, context: Mapping[str, Any], where: str) -> Any:
    try:
        one = _ONE_EXPRESSION.match(text)
        if one:
            value = _compiled_expression(one.group("expr"))(**context)
            if isinstance(value, jinja2.Undefined):
                str(value)  # StrictUndefined raises, naming what was missing
            return value
        return _compiled_template(text).render(**context)
    except jinja2.UndefinedError as exc:
        raise TemplateError(
            f"{where}: undefined name in template {text.strip()!r}: {exc}"
        ) from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"{where}: template {text.strip()!r} failed: {exc}") from None
    except Exception as exc:
        raise TemplateError(
            f"{where}: template {text.strip()!r} raised {type(exc).__name__}: {exc}"
        ) from None


@dataclass
class TemplateNames:
    """What a template refers to: free names, ``steps.X`` and ``env.X`` references."""

    free: set[str] = field(default_factory=set)
    steps: set[str] = field(default_factory=set)
    env: set[str] = field(default_factory=set)
    params: set[str] = field(default_factory=set)
    #: Of ``steps``, ``env`` and ``params``, those also used otherwise than as
    #: ``name.key`` or ``name['key']`` (so which keys are read cannot be told).
    dynamic: set[str] = field(default_factory=set)


@lru_cache(maxsize=32768)
def analyse(text: str) -> TemplateNames:
    """The names ``text`` refers to; a syntax error raises TemplateError. Cached
    (validation, dependencies and runs each look at every template): callers must
    not change what it returns."""
    try:
        tree = _ENV.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error in {text.strip()!r}: {exc.message}") from None
    names = TemplateNames(free=set(meta.find_undeclared_variables(tree)) - JINJA_GLOBALS)
    keyed = {"steps": names.steps, "env": names.env, "params": names.params}
    covered: set[int] = set()
    # `params.x | default(...)` and `params.x is defined` may name a missing param.
    guarded = {id(f.node) for f in tree.find_all(nodes.Filter) if f.name in ("default", "d")}
    guarded |= {id(t.node) for t in tree.find_all(nodes.Test) if t.name in ("defined", "undefined")}
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if not isinstance(node, (nodes.Getattr, nodes.Getitem)):  # for the type checker
            continue
        target = node.node
        if not isinstance(target, nodes.Name) or target.name not in keyed:
            continue
        if isinstance(node, nodes.Getattr):
            key: Any = node.attr
        elif isinstance(node.arg, nodes.Const):
            key = node.arg.value
        else:
            continue
        if isinstance(key, str):
            if not (target.name == "params" and id(node) in guarded):
                keyed[target.name].add(key)
            covered.add(id(target))
    for node in tree.find_all(nodes.Name):
        if node.name in keyed and id(node) not in covered:
            names.dynamic.add(node.name)
    return names


def unquoted_outputs(text: str) -> list[str]:
    """The ``{{ ... }}`` expressions of ``text`` whose value is inserted as is, not
    through a final ``| quote`` filter (in a shell command, each is a place where a
    value can inject commands). A syntax error gives none (validation reports it)."""
    try:
        tree = _ENV.parse(text)
    except jinja2.TemplateSyntaxError:
        return []
    found = []
    for output in tree.find_all(nodes.Output):
        for expr in output.nodes:
            if isinstance(expr, nodes.TemplateData):
                continue
            if isinstance(expr, nodes.Filter) and expr.name == "quote":
                continue
            found.append(_source_of(expr))
    return found


def _source_of(expr: nodes.Node) -> str:
    """A short form of an expression for messages: ``{{ item }}``, ``{{ params.x }}``."""
    if isinstance(expr, nodes.Name):
        return f"{{{{ {expr.name} }}}}"
    if isinstance(expr, nodes.Getattr) and isinstance(expr.node, nodes.Name):
        return f"{{{{ {expr.node.name}.{expr.attr} }}}}"
    return "{{ ... }}"
