"""Tasks that build on tasks: signatures, and the chains, groups and chords made of them.

A :class:`Signature` is a call not yet enqueued (``queue.signature(fn, ...)``,
``handle.s(...)``). Compositions arrange them:

- ``chain(a, b, c)``: each runs after the one before, its result passed as the
  first argument of the next call;
- ``group(a, b, c)``: the members run in parallel; the group's result is the
  list of the members' results, in member order;
- ``chord(group_or_sigs, callback)``: the callback runs once, after every member
  has finished, with the list of their results (member order) as its first argument.

``queue.submit(composition)`` stores all of it in one transaction as tasks with
dependencies (see ``TaskOptions.depends_on``): the database, not a coordinator,
makes each step due in the transaction that finishes its last parent. Here the
composition is only planned: :func:`plan` turns it into steps in dependency order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sitq.errors import InvalidComposition
from sitq.task import TaskOptions

#: The header that asks the worker to pass the parents' results: "one" (the
#: only parent's result as the first argument) or "list" (all, in order).
PARENT_RESULTS_HEADER = "sitq-parent-results"


@dataclass(frozen=True)
class Signature:
    """A call of ``fn(*args, **kwargs)`` to enqueue later, with option overrides.

    Made by ``queue.signature(fn, ...)`` (with the options of the queue or of its
    ``with_options(...)``) or ``handle.s(...)`` (a registered task's options).
    ``set(**options)`` returns a copy with more options (``queue``, ``priority``,
    ``on_parent_failure``, ...). ``a | b`` chains them."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: The options given to with_options/set, applied over ``base``.
    overrides: dict[str, Any] = field(default_factory=dict)
    #: A registered task's own options; None: those of the queue that submits it.
    base: TaskOptions | None = None

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise InvalidComposition(
                f"a signature needs a callable, got {type(self.fn).__name__} {self.fn!r:.80}"
            )
        (self.base or TaskOptions()).merged(**self.overrides)  # refuse bad options now

    def set(self, **options: Any) -> Signature:
        """A copy with these task options too (see :class:`~sitq.TaskOptions`)."""
        return Signature(self.fn, self.args, self.kwargs, {**self.overrides, **options}, self.base)

    def options(self, default: TaskOptions) -> TaskOptions:
        """The options this call is enqueued with, over the submitter's ``default``."""
        return (self.base or default).merged(**self.overrides)

    def __or__(self, other: Composable) -> chain:
        return chain(self, other)

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", None) or repr(self.fn)
        return f"Signature({name}, args={self.args!r:.60}, kwargs={self.kwargs!r:.60})"


class chain:
    """Steps run one after another; each step's result is the first argument of
    the next call. A step may be a signature or any composition."""

    def __init__(self, *steps: Composable) -> None:
        if len(steps) == 1 and isinstance(steps[0], (list, tuple)):
            steps = tuple(steps[0])
        if not steps:
            raise InvalidComposition("an empty chain: give chain() at least one signature")
        self.steps: tuple[Composable, ...] = tuple(
            _checked(s, "chain", i) for i, s in enumerate(steps)
        )

    def __or__(self, other: Composable) -> chain:
        return chain(*self.steps, other)

    def __repr__(self) -> str:
        return f"chain({', '.join(map(repr, self.steps))})"


class group:
    """Members run in parallel; the group's result is the list of their results,
    in member order (through a small collector task, see ``queue.submit``)."""

    def __init__(self, *members: Composable | Iterable[Composable]) -> None:
        flat: Sequence[Any] = members
        if len(members) == 1 and not isinstance(members[0], _COMPOSABLE):
            flat = _as_list(members[0], "group")
        if not flat:
            raise InvalidComposition(
                "an empty group: give group() at least one signature (its result would "
                "be an empty list with nothing to wait for; skip the group instead)"
            )
        self.members: tuple[Composable, ...] = tuple(
            _checked(m, "group", i) for i, m in enumerate(flat)
        )

    def __or__(self, other: Composable) -> chain:
        return chain(self, other)

    def __repr__(self) -> str:
        return f"group({len(self.members)} members)"


class chord:
    """A group and a callback that runs once, after every member has finished,
    with the list of the members' results (member order) as its first argument."""

    def __init__(self, header: group | Iterable[Composable], callback: Composable | None = None):
        self.header = header if isinstance(header, group) else group(*_as_list(header, "chord"))
        if callback is None:
            raise InvalidComposition(
                "a chord needs a callback: chord(members, callback_signature); for members "
                "alone use group(...)"
            )
        self.callback: Composable = _checked(callback, "chord callback", 0)

    def __or__(self, other: Composable) -> chain:
        return chain(self, other)

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.callback!r})"


Composable = Signature | chain | group | chord
_COMPOSABLE = (Signature, chain, group, chord)


def _as_list(value: Any, where: str) -> list[Any]:
    try:
        return list(value)
    except TypeError:
        raise InvalidComposition(
            f"{where}() takes signatures (queue.signature(fn, ...) or handle.s(...)), got "
            f"{type(value).__name__} {value!r:.80}"
        ) from None


def _checked(item: Any, where: str, index: int) -> Composable:
    if isinstance(item, _COMPOSABLE):
        return item
    hint = (
        " (a task id: to wait for a stored task, use queue.with_options(depends_on=[id]))"
        if isinstance(item, str)
        else " (a function: wrap it as queue.signature(fn, *args))"
        if callable(item)
        else ""
    )
    raise InvalidComposition(
        f"item {index} of the {where} is a {type(item).__name__}, not a signature{hint}: "
        "compositions take queue.signature(fn, ...), handle.s(...), chain, group or chord"
    )


def collect(results: list[Any]) -> list[Any]:
    """The task that ends a group: its result is the members' results, in order."""
    return results


@dataclass
class Step:
    """One task of a planned composition. ``parents`` are other steps' keys (int,
    their index in the plan) or stored task ids (str); ``pass_results`` is how the
    worker passes the parents' results ("one", "list", or None)."""

    sig: Signature
    parents: tuple[int | str, ...]
    pass_results: str | None


@dataclass
class Plan:
    """A composition as tasks in dependency order, and which one holds its result."""

    steps: list[Step]
    result: int


_COLLECT = Signature(collect)


def plan(composition: Any, parents: Sequence[str] = ()) -> Plan:
    """The steps of ``composition`` (refused with InvalidComposition if it is not
    one); its entry steps also wait for the stored tasks ``parents``."""
    if not isinstance(composition, _COMPOSABLE):
        _checked(composition, "submit() call", 0)
    steps: list[Step] = []

    def add(node: Composable, after: tuple[int | str, ...], mode: str | None) -> int:
        if isinstance(node, Signature):
            steps.append(Step(node, after, mode))
            return len(steps) - 1
        if isinstance(node, chain):
            last = add(node.steps[0], after, mode)
            for step in node.steps[1:]:
                last = add(step, (last,), "one")
            return last
        if isinstance(node, group):
            members = tuple(add(m, after, mode) for m in node.members)
            return add(_COLLECT, members, "list")
        members = tuple(add(m, after, mode) for m in node.header.members)
        return add(node.callback, members, "list")

    result = add(composition, tuple(parents), None)
    return Plan(steps, result)
