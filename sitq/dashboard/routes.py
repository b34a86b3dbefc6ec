"""The dashboard's pages, the fragments that keep them live, and its actions."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from sitq.batch.store import BatchStore
from sitq.dashboard import metrics, queries
from sitq.dashboard.access import is_loopback
from sitq.dashboard.security import CSRF_FIELD, csrf_ok
from sitq.dashboard.workflows import MAX_FAILURES_KEPT
from sitq.errors import ConfigurationError, TaskNotFound
from sitq.queue import TaskQueue
from sitq.records import CancelOutcome
from sitq.workflow.store import WorkflowStore

#: Rows per page of a task listing.
PAGE_SIZE = 50
#: Workflow runs listed on /workflows (newest first; `sitq workflow status` lists all).
LISTED_RUNS = 100
#: The largest form body an action accepts (it holds one CSRF token).
MAX_FORM_BYTES = 4096
#: What an action did, by the code it redirects with (fixed texts: nothing from
#: the address bar is echoed into the page).
NOTICES = {
    "retried": "Queued again.",
    "not-retried": "Not retried: only failed or cancelled tasks can be.",
    "cancelled": "Cancelled.",
    "cancel-requested": "Cancel requested: its worker stops it, or drops it if it has not started.",
    "not-cancelled": "Not cancelled: it had already finished.",
    "retried-queue": "Failed tasks of the queue queued again.",
    "paused": "Paused: workers take no new tasks from the queue (running ones finish).",
    "resumed": "Resumed: workers take tasks from the queue again.",
    "not-paused": "It was not paused.",
}
#: Failed workflow items per page of a run's page.
FAILURES_PAGE_SIZE = 50


def _queue(request: Request) -> TaskQueue:
    return request.app.state.queue


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    """A template rendered with what every page needs (config, CSRF token, access)."""
    config = request.app.state.config
    notice = NOTICES.get(request.query_params.get("done", ""))
    page = request.app.state.templates.get_template(template).render(
        request=request,
        config=config,
        csrf_field=CSRF_FIELD,
        csrf_token=request.app.state.csrf_token,
        local_only=config.token is None and is_loopback(config.host),
        notice=notice,
        statuses=queries.STATUSES,
        **context,
    )
    return HTMLResponse(page, status_code=status_code)


# -- what the pages show -------------------------------------------------------


async def _overview(request: Request) -> dict[str, Any]:
    """Queues, workers, recent failures and batches."""
    state = request.app.state
    data = await queries.overview(state.queue, state.history, state.workflows, time.monotonic())
    return {"data": data}


async def metrics_page(request: Request) -> Response:
    """The overview's figures in the Prometheus text format (see ``metrics``)."""
    text = await metrics.exposition(_queue(request), request.app.state.history, time.monotonic())
    return Response(text, media_type=metrics.CONTENT_TYPE)


def _page_number(request: Request) -> int:
    """The ``page`` query parameter (1 if absent)."""
    try:
        number = int(request.query_params.get("page") or 1)
    except ValueError:
        raise HTTPException(400, "page must be a whole number") from None
    return max(1, number)


def _pager(path: str, number: int, has_next: bool) -> dict[str, Any]:
    def url(n: int) -> str:
        return path + ("" if n == 1 else f"?page={n}")

    return {
        "page_number": number,
        "previous_url": url(number - 1) if number > 1 else None,
        "next_url": url(number + 1) if has_next else None,
        "live_url": "/live" + url(number),
    }


async def _queues(request: Request) -> dict[str, Any]:
    queue, history = _queue(request), request.app.state.history
    number = _page_number(request)
    table = await queries.queue_table(queue, history, page=number)
    pages = max(1, -(-table.count // queries.QUEUES_PAGE_SIZE))
    if number > pages:
        number = pages
        table = await queries.queue_table(queue, history, page=number)
    return {
        "table": table,
        "pages": pages,
        **_pager("/queues", number, number < pages),
    }


async def _batches(request: Request) -> dict[str, Any]:
    number = _page_number(request)
    size = queries.BATCHES_PAGE_SIZE
    rows = await queries.batch_rows(_queue(request), size + 1, (number - 1) * size)
    return {"batches": rows[:size], **_pager("/batches", number, len(rows) > size)}


async def _listing(request: Request) -> dict[str, Any]:
    """Tasks filtered by queue, status and batch (empty means any), newest first."""
    params = request.query_params
    keys = (("queue", "queue"), ("status", "status"), ("batch_id", "batch"))
    filters = {name: params.get(key) or None for name, key in keys}
    if filters["status"] is not None and filters["status"] not in queries.STATUSES:
        # Said here, not by list_tasks: its message speaks of Python's None.
        known = ", ".join(queries.STATUSES)
        raise HTTPException(
            400,
            f"unknown status {filters['status']!r}; use one of {known}, or leave it out "
            "for every status",
        )
    cursor = params.get("cursor") or None
    queue = _queue(request)
    page = await queue.list_tasks(**filters, cursor=cursor, limit=PAGE_SIZE)
    batch = None
    if filters["batch_id"]:
        batches = BatchStore.of(queue)
        record = await batches.get_batch(filters["batch_id"])
        if record is not None:
            counts = await batches.batch_status_counts(record.id)
            batch = queries.BatchRow(record.id, record.created_at, record.size, counts)
    kept = [(k, v) for k, v in parse_qsl(request.url.query) if k in ("queue", "status", "batch")]
    next_url = None
    if page.next_cursor is not None:
        next_url = "/tasks?" + urlencode([*kept, ("cursor", page.next_cursor)])
    return {
        "page": page,
        "filters": filters,
        "batch": batch,
        "next_url": next_url,
        "first_url": "/tasks?" + urlencode(kept),
        "paged": cursor is not None,
        "live_url": "/live/tasks?" + request.url.query,
        "now": queue.now(),
    }


async def _task(request: Request, reveal: bool = False) -> dict[str, Any]:
    """One task: its call, attempts, timings, result or error and traceback. The
    call and result show when signed and small, else on request (``show_task``);
    the live part leaves the call out (and shows a result only if it may load)."""
    task_id = request.path_params["task_id"]
    queue = _queue(request)
    with_call = not request.url.path.startswith("/live/")
    detail = await queries.task_detail(queue, task_id, with_call=with_call, reveal=reveal)
    if detail is None:
        raise HTTPException(404, f"no task with id {task_id!r} (it may have been pruned)")
    return {"task": detail, "now": queue.now()}


async def show_task(request: Request) -> Response:
    """The task page with its call and result loaded, on explicit request: a POST
    with the page's CSRF token, since loading an unsigned pickle runs code from the
    database and a big one costs its size (a snapshot: it does not refresh)."""
    await _check_csrf(request)
    return render(request, "task.html", **await _task(request, reveal=True))


async def workflows_page(request: Request) -> Response:
    """The newest workflow runs with their steps' progress (``/workflows/`` redirects here)."""
    if request.url.path.endswith("/"):
        return RedirectResponse("/workflows", status_code=308)
    queue = _queue(request)
    runs = await request.app.state.workflows.recent(queue, LISTED_RUNS)
    return render(request, "workflows.html", runs=runs)


async def _run(request: Request) -> dict[str, Any]:
    """One workflow run: its steps' progress and its failed items, a page at a time."""
    run_id = request.path_params["run_id"]
    queue = _queue(request)
    record = await WorkflowStore.of(queue).get_workflow_run(run_id)
    if record is None:
        raise HTTPException(404, f"no workflow run with id {run_id!r}")
    run = await request.app.state.workflows.run(queue, record)
    pages = max(1, -(-len(run.failures) // FAILURES_PAGE_SIZE))
    number = min(_page_number(request), pages)
    start = (number - 1) * FAILURES_PAGE_SIZE
    return {
        "run": run,
        "failures": run.failures[start : start + FAILURES_PAGE_SIZE],
        "failures_start": start,
        "failures_pages": pages,
        "max_failures": MAX_FAILURES_KEPT,
        "now": queue.now(),
        **_pager("/workflows/" + quote(run_id, safe=""), number, number < pages),
    }


# -- actions ----------------------------------------------------------------------


async def _check_csrf(request: Request) -> None:
    """Refuse a POST whose form lacks this dashboard's CSRF token."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, "form too large")
    form = dict(parse_qsl(body.decode("utf-8", "replace")))
    if not csrf_ok(form.get(CSRF_FIELD), request.app.state.csrf_token):
        raise HTTPException(
            403, "refused: the form's CSRF token is missing or stale; reload the page and retry"
        )


#: Where a cancel redirects, by what it did.
CANCEL_CODES = {
    CancelOutcome.CANCELLED: "cancelled",
    CancelOutcome.REQUESTED: "cancel-requested",
    CancelOutcome.FINISHED: "not-cancelled",
}


async def task_action(request: Request) -> Response:
    """``/retry``: queue a failed or cancelled task again; ``/cancel``: cancel a
    queued task, or ask a running task's worker to stop it."""
    await _check_csrf(request)
    task_id, queue = request.path_params["task_id"], _queue(request)
    try:
        if request.url.path.endswith("/retry"):
            code = "retried" if await queue.retry(task_id) else "not-retried"
        else:
            code = CANCEL_CODES[await queue.request_cancel(task_id)]
    except TaskNotFound as exc:
        raise HTTPException(404, f"no task with id {task_id!r}") from exc
    return RedirectResponse(f"/tasks/{task_id}?" + urlencode({"done": code}), status_code=303)


async def queue_action(request: Request) -> Response:
    """``/retry-failed``: queue every failed task of a queue again; ``/pause``: stop
    workers taking new tasks from it; ``/resume``: let them take its tasks again."""
    await _check_csrf(request)
    queue, name = _queue(request), request.path_params["queue"]
    action = request.url.path.rsplit("/", 1)[1]
    if action == "retry-failed":
        await queue.retry_failed(name)
        code = "retried-queue"
    elif action == "pause":
        await queue.pause(name)
        code = "paused"
    else:
        code = "resumed" if await queue.resume(name) else "not-paused"
    return RedirectResponse(f"/?done={code}", status_code=303)


# -- pages and their live parts -------------------------------------------------------

Data = Callable[[Request], Awaitable[dict[str, Any]]]


def _page(template: str, data: Data) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint that renders ``template`` with what ``data`` reads for the request."""

    async def endpoint(request: Request) -> Response:
        return render(request, template, **await data(request))

    return endpoint


#: Each page (path, template, what it shows) and its live part: the same data in
#: the ``_`` template, under ``/live``, fetched again every few seconds.
PAGES: list[tuple[str, str, Data]] = [
    ("/", "overview", _overview),
    ("/queues", "queues", _queues),
    ("/batches", "batches", _batches),
    ("/tasks", "tasks", _listing),
    ("/tasks/{task_id}", "task", _task),
    ("/workflows/{run_id:path}", "workflow", _run),
]
PAGE_ROUTES = [
    route
    for path, name, data in PAGES
    for route in (
        Route(path, _page(f"{name}.html", data)),
        Route("/live" + (path if path != "/" else "/overview"), _page(f"_{name}.html", data)),
    )
]


# -- errors -----------------------------------------------------------------------


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return render(request, "message.html", status_code=exc.status_code, message=exc.detail)


async def _bad_input(request: Request, exc: Exception) -> Response:
    return render(request, "message.html", status_code=400, message=str(exc))


EXCEPTION_HANDLERS = {HTTPException: _http_error, ConfigurationError: _bad_input}
