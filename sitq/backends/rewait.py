"""What a retry changes in the dependency graph around the tasks it queues again.

A retried task is unfinished again, so everything that had counted it as
finished must wait for it again:

- the retried task itself waits for those of its parents still unfinished
  (its finished parents, whatever their end, no longer hold it back: the retry
  asked for it to run);
- a dependent its failure had cancelled (``cancelled_by``) comes back and waits
  for its unfinished parents, unless another of its parents failed meanwhile:
  then it stays cancelled, now naming that parent, so that retrying that one
  brings it back;
- a dependent still queued (``on_parent_failure="run"``, or due and not yet
  claimed) counts the retried parent as unfinished again. One a worker holds is
  left alone: its start mark may lag its real start, so calling it back could
  run it twice.
- a retried task none of whose parents is stored any more (purged) waits for
  nothing.

The backend reads the graph (``retry_family`` / ``family_state``) and writes the
rows this module computes (``set_wait_state``), in the retry's transaction.
"""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sitq.backends.base import WAITING_OFFSET

_UNFINISHED = ("queued", "running")


@dataclass
class Node:
    """A task of the family as read: its own state and its parents' (in order)."""

    id: str
    status: str
    waiting: int
    mode: str | None
    available_at: float
    cancelled_by: str | None
    #: (parent id, status, cancelled_by, func_name) per parent still stored
    parents: list[tuple[str, str, str | None, str]] = field(default_factory=list)


def nodes_from_rows(rows: Iterable[Sequence[Any]]) -> dict[str, Node]:
    """``family_state`` rows (one per child and parent) grouped per child."""
    nodes: dict[str, Node] = {}
    for cid, status, waiting, mode, available_at, cancelled_by, *parent in rows:
        node = nodes.get(cid)
        if node is None:
            node = nodes[cid] = Node(
                cid, status, int(waiting), mode, float(available_at), cancelled_by
            )
        node.parents.append((parent[0], parent[1], parent[2], parent[3]))
    return nodes


def rewait_rows(
    retried: Sequence[str], nodes: dict[str, Node], now: float
) -> list[tuple[Any, ...]]:
    """The ``set_wait_state`` rows, (id, status, waiting, available_at,
    cancelled_by, error, reset) each, for the family ``nodes`` of the tasks just
    queued again by a retry (``retried``); ``reset`` clears a cancelled task's end."""
    back = set(retried)  # final a moment ago, unfinished now
    decided: dict[str, tuple[str, str | None]] = {}  # id -> (status, cancelled_by)
    rows: list[tuple[Any, ...]] = []

    def state(parent: tuple[str, str, str | None, str]) -> tuple[str, str | None]:
        return decided.get(parent[0], (parent[1], parent[2]))

    for task_id in back - nodes.keys():
        # Linked but with no parent stored any more (all purged): nothing to wait for.
        rows.append((task_id, "queued", 0, now, None, None, 0))
        decided[task_id] = ("queued", None)
    for node in _parents_first(nodes):
        unfinished = sum(state(p)[0] in _UNFINISHED for p in node.parents)
        due_at = now + WAITING_OFFSET if unfinished else now
        if node.id in back:
            if node.mode is not None:
                rows.append((node.id, "queued", unfinished, due_at, None, None, 0))
            decided[node.id] = ("queued", None)
        elif node.status == "cancelled" and node.cancelled_by in back:
            failed = next(
                (
                    p
                    for p in node.parents
                    if state(p)[0] not in _UNFINISHED and state(p)[0] != "succeeded"
                ),
                None,
            )
            if failed is None:
                rows.append((node.id, "queued", unfinished, due_at, None, None, 1))
                back.add(node.id)
                decided[node.id] = ("queued", None)
                continue
            status, root = state(failed)
            root = root if status == "cancelled" and root else failed[0]
            error = (
                f"ParentFailed: parent task {failed[0]} ({failed[3]}) ended {status}, "
                'and this task waited for it (on_parent_failure="cancel")'
            )
            rows.append((node.id, "cancelled", 0, node.available_at, root, error, 0))
            decided[node.id] = ("cancelled", root)
        elif node.status == "queued":
            again = sum(p[0] in back for p in node.parents)
            if again:
                # One that was due (nothing left to wait for) is pushed back.
                pushed = node.available_at + (WAITING_OFFSET if node.waiting == 0 else 0.0)
                rows.append((node.id, "queued", node.waiting + again, pushed, None, None, 0))
    return rows


def _parents_first(nodes: dict[str, Node]) -> list[Node]:
    """The family's nodes, each after those of its parents that are in it (linear
    in the family's size; no cycle is ever stored)."""
    graph = {nid: [p[0] for p in nodes[nid].parents if p[0] in nodes] for nid in sorted(nodes)}
    return [nodes[nid] for nid in graphlib.TopologicalSorter(graph).static_order()]
