"""The dashboard's ASGI app: its configuration, its lifetime (one TaskQueue, opened
at startup), and the wiring of routes, templates, static files and the guard."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sitq.dashboard import queries, routes, views
from sitq.dashboard.history import FINISHED_WINDOW, Counted, CountHistory
from sitq.dashboard.security import Guard
from sitq.dashboard.workflows import WorkflowItems
from sitq.display import first_line
from sitq.queue import StorageTarget, TaskQueue

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class DashboardConfig:
    """How a dashboard runs.

    - ``db``: the database URL or path (or a Backend), as for ``TaskQueue``.
    - ``token``: the access token every request must carry; None allows only
      loopback Host names (the CLI insists on a token off loopback).
    - ``host`` and ``port``: where it listens, shown on the page.
    - ``refresh_seconds``: how often open pages fetch fresh data.
    """

    db: StorageTarget = None
    token: str | None = None
    host: str = "127.0.0.1"
    port: int = 8765
    refresh_seconds: float = 2.0


def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    filters = ("age", "when", "polyline", "segments", "percent", "path", "file_name", "size")
    env.filters.update({name: getattr(views, name) for name in filters}, first_line=first_line)
    env.globals.update(
        chart_width=views.CHART_WIDTH,
        chart_height=views.CHART_HEIGHT,
        bar_width=views.BAR_WIDTH,
        load_limit=queries.LOAD_LIMIT,
    )
    return env


def create_app(config: DashboardConfig) -> Starlette:
    """The dashboard as an ASGI app; serve it with uvicorn (``sitq dashboard`` does)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # create=False: a mistyped path is an error, not a new empty database.
        async with TaskQueue(config.db, create=False) as queue:
            app.state.queue = queue

            async def count() -> Counted:
                return await queue.task_counts(finished_since=queue.now() - FINISHED_WINDOW)

            app.state.history = CountHistory(count, queue.retrying_counts)
            app.state.workflows = WorkflowItems()
            yield

    app = Starlette(
        routes=[
            Route("/metrics", routes.metrics_page),
            Route("/tasks/{task_id}/show", routes.show_task, methods=["POST"]),
            Route("/tasks/{task_id}/retry", routes.task_action, methods=["POST"]),
            Route("/tasks/{task_id}/cancel", routes.task_action, methods=["POST"]),
            # Before the run pages, whose {run_id:path} would take "/workflows/".
            Route("/workflows", routes.workflows_page),
            Route("/workflows/", routes.workflows_page),
            *routes.PAGE_ROUTES,
            # {queue:path}: a queue's name may hold a slash.
            Route("/queues/{queue:path}/retry-failed", routes.queue_action, methods=["POST"]),
            Route("/queues/{queue:path}/pause", routes.queue_action, methods=["POST"]),
            Route("/queues/{queue:path}/resume", routes.queue_action, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[Middleware(Guard, token=config.token)],
        exception_handlers=routes.EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.csrf_token = secrets.token_urlsafe(32)
    app.state.templates = _templates()
    return app
