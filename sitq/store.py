"""The surface the layers' own stores reach the database through.

Named batches (``sitq.batch``) and workflow runs (``sitq.workflow``) keep tables
in the queue's database but are not part of the core storage contract
(:class:`sitq.backends.base.Backend`): each layer owns a store class that holds
its logic once and its SQL in one ``.sql`` file per dialect (see
:mod:`sitq.sqlfiles`), and runs it through a :class:`StoreSession`, which every
backend provides (``Backend.store_session``, reached by the layers through
``TaskQueue.store_session``). The tables themselves are created by each
backend's schema migration.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sitq.sqlfiles import Dialect

if TYPE_CHECKING:
    from sitq.backends.base import NewTask

__all__ = ["StoreSession", "StoreTransaction"]

T = TypeVar("T")


class StoreTransaction(Protocol):
    """Statements inside one transaction of a :class:`StoreSession`: they commit
    together when the body returns, and roll back together if it raises."""

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """The rows of ``sql`` (a SELECT, or a write with RETURNING)."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run ``sql``; return how many rows it changed."""

    async def insert_tasks(self, tasks: Sequence[NewTask]) -> None:
        """Store ``tasks`` as ``Backend.enqueue`` does (workers are woken once the
        transaction commits), so rows of a layer's own commit with them."""


class StoreSession(Protocol):
    """SQL on a backend's own database, for the layers that keep tables there
    (``sitq.batch``, ``sitq.workflow``) and write their SQL once per dialect.

    Parameters are positional: ``?1``, ``?2`` ... in SQLite, ``$1``, ``$2`` ... in
    PostgreSQL, bound from the same sequence. A PostgreSQL query names its tables
    ``{s}.sitq_...``: the session puts the backend's schema there. A list passed
    as one parameter is made with :meth:`array` (JSON text in SQLite, read with
    ``json_each``; an array in PostgreSQL). Every call is committed when it
    returns; a database error is raised as the SitqError the backend raises for
    it (a full disk, an unreachable server), the original as its cause.
    """

    @property
    def dialect(self) -> Dialect:
        """Which SQL the database speaks: "sqlite" or "postgres"."""

    def now(self) -> float:
        """The backend's clock, unix seconds (times stored are on it)."""

    def describe(self) -> str:
        """Where the database is, for messages (never includes secrets)."""

    def array(self, values: Sequence[Any]) -> Any:
        """``values`` as one query parameter (a list)."""

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """The rows of a SELECT."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement in its own transaction (retried while another process
        holds the database, as the backend's writes are); return how many rows it
        changed."""

    async def transaction(self, body: Callable[[StoreTransaction], Awaitable[T]]) -> T:
        """Run ``body`` in one transaction and return what it returns: everything it
        did commits together, or nothing does if it raises (the error is raised)."""

    async def write_soon(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one write statement, committed together with the other writes made
        at about the same time (group commit: for frequent small writes such as a
        workflow's item progress). Returns once it is committed."""

    async def keep_text_ids(self) -> bool:
        """Make the store keep tasks under text ids (as another database made them:
        ``sitq migrate``); False if it cannot (a SQLite file that keeps integer
        row ids and already holds tasks)."""
