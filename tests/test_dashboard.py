"""The dashboard over HTTP (Starlette's TestClient, no browser): pages, listings and
their pagination, the task page, actions, tokens, CSRF and the command line."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jobs
import progress_jobs
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient
from support import SITQ, WorkerProcess, subprocess_env, wait_until

from sitq import TaskQueue
from sitq.backends.base import Outcome, WorkerRecord
from sitq.batch import BatchStore
from sitq.dashboard import DashboardConfig, create_app
from sitq.dashboard.cli import dashboard
from sitq.dashboard.security import COOKIE
from sitq.serialization import bound_dumps, result_binding
from sitq.workflow.store import NewWorkflowRun, WorkflowStore

LOCAL = "http://127.0.0.1:8765"
TOKEN = "s3cret-token-for-tests"
TASK_LINK = re.compile(r'href="/tasks/([0-9a-f]{32}|[0-9]+)"')


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def enqueue(db: Path, fn, *args, queue: str = "default", **kwargs) -> str:  # type: ignore[no-untyped-def]
    async with TaskQueue(db) as q:
        return await q.with_options(queue=queue).enqueue(fn, *args, **kwargs)


async def finish_next(db: Path, queue: str, outcome: Outcome) -> str:
    """Claim the next task of ``queue`` and end it with ``outcome`` (as a worker would)."""
    async with TaskQueue(db) as q:
        [claimed] = await q._backend.claim("test-worker", [queue], 1, 60.0)
        assert await q._backend.finish([(claimed.lease, outcome)]) == [True]
        return claimed.id


def failed(error: str = "ValueError: boom") -> Outcome:
    return Outcome(
        "failed",
        error=error,
        traceback='Traceback (most recent call last):\n  File "jobs.py", line 1\n' + error,
    )


async def create_db(db: Path) -> None:
    """Create the database (and close it: a connection left open would be closed
    by the garbage collector, on a loop that is gone)."""
    async with TaskQueue(db):
        pass


def csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF field on the page"
    return found.group(1)


@pytest.fixture
def client(db_path: Path) -> Iterator[TestClient]:
    """The dashboard on a fresh database, as a local (token-less) dashboard."""
    run(create_db(db_path))
    app = create_app(DashboardConfig(db=str(db_path)))
    with TestClient(app, base_url=LOCAL) as test_client:
        yield test_client


@pytest.fixture
def token_client(db_path: Path) -> Iterator[TestClient]:
    """A dashboard that demands a token, listening beyond loopback."""
    run(create_db(db_path))
    app = create_app(DashboardConfig(db=str(db_path), token=TOKEN, host="0.0.0.0"))
    with TestClient(app, base_url="http://dash.example:8765") as test_client:
        yield test_client


# -- pages ------------------------------------------------------------------------


def test_overview_counts_queues_and_failures(client: TestClient, db_path: Path) -> None:
    for _ in range(3):
        run(enqueue(db_path, jobs.add, 1, 2, queue="mail"))
    run(enqueue(db_path, jobs.add, 1, 2, queue="reports"))
    failed_id = run(finish_next(db_path, "mail", failed("KeyError: 'user'")))
    page = client.get("/")
    assert page.status_code == 200
    mail = re.search(r'<tr data-queue="mail">(.*?)</tr>', page.text, re.S)
    assert mail is not None
    counts = dict(re.findall(r'data-status="(\w+)"><a [^>]*>(\d+)</a>', mail.group(1)))
    assert counts == {
        "queued": "2",
        "running": "0",
        "succeeded": "0",
        "failed": "1",
        "cancelled": "0",
    }
    assert 'data-queue="reports"' in page.text
    assert f'href="/tasks/{failed_id}"' in page.text and "KeyError: &#39;user&#39;" in page.text
    assert "Local only" in page.text
    live = client.get("/live/overview")
    assert live.status_code == 200 and "<html" not in live.text and 'data-queue="mail"' in live.text


def test_everything_is_escaped(client: TestClient, db_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    run(enqueue(db_path, jobs.echo_kwargs, evil, queue=evil))
    run(finish_next(db_path, evil, failed(f"ValueError: {evil}")))
    for url in ("/", "/tasks?status=failed", "/tasks?queue=" + evil):
        text = client.get(url).text
        assert evil not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    task_id = TASK_LINK.search(client.get("/tasks").text).group(1)  # type: ignore[union-attr]
    for text in (client.get(f"/tasks/{task_id}").text, show(client, task_id).text):
        assert evil not in text and "&lt;script&gt;" in text


def test_security_headers(client: TestClient) -> None:
    response = client.get("/")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["x-frame-options"] == "DENY"
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/app.css").status_code == 200


def test_pages_need_no_outside_assets(client: TestClient, db_path: Path) -> None:
    task_id = run(enqueue(db_path, jobs.add, 1, 2))
    for url in ("/", "/tasks", f"/tasks/{task_id}"):
        text = client.get(url).text
        assert not re.search(r'(src|href)="(https?:)?//', text), url


def show(client: TestClient, task_id: str, **headers: str) -> Any:
    """The task page with its call and result loaded on request (the POST its
    "Show arguments and result" button sends)."""
    token = csrf(client.get(f"/tasks/{task_id}", headers=headers).text)
    return client.post(f"/tasks/{task_id}/show", data={"csrf": token}, headers=headers)


def test_task_page_shows_call_error_and_traceback(client: TestClient, db_path: Path) -> None:
    task_id = run(enqueue(db_path, jobs.echo_kwargs, "x" * 10_000, list(range(500)), key={"a": 1}))
    run(finish_next(db_path, "default", failed("ValueError: boom")))
    text = client.get(f"/tasks/{task_id}").text
    assert "Traceback (most recent call last)" in text and "ValueError: boom" in text
    assert "Arguments not loaded: payloads are not signed here" in text
    text = show(client, task_id).text
    call = re.search(r'<pre class="call" id="call">(.*?)</pre>', text, re.S).group(1)  # type: ignore[union-attr]
    assert call.startswith("jobs.echo_kwargs(&#39;xxx") and "key={&#39;a&#39;: 1}" in call
    assert len(call) < 3000  # bounded: the 10,000-character argument is cut
    assert "Traceback (most recent call last)" in text and "ValueError: boom" in text
    assert 'action="/tasks/' + task_id + '/retry"' in text
    assert "/cancel" not in text  # a failed task cannot be cancelled


def test_task_page_shows_a_result(client: TestClient, db_path: Path) -> None:
    task_id = run(enqueue(db_path, jobs.add, 1, 2))

    async def succeed() -> None:
        async with TaskQueue(db_path) as q:
            [claimed] = await q._backend.claim("w", ["default"], 1, 60.0)
            result = q.serializer.dumps(3)
            await q._backend.finish([(claimed.lease, Outcome("succeeded", result=result))])

    run(succeed())
    text = client.get(f"/live/tasks/{task_id}").text
    assert "status-succeeded" in text and 'id="result"' not in text  # unsigned: not loaded
    assert re.search(r'<pre id="result">3</pre>', show(client, task_id).text)


class Marker:
    """Unpickling this creates the file ``path`` (as a hostile pickle could run any
    code): the proof that something was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


async def marked_task(db: Path, call_marker: Path, result_marker: Path) -> str:
    """A succeeded task whose payload and result each create a marker when unpickled."""
    async with TaskQueue(db) as q:
        task_id = await q.enqueue(jobs.echo_kwargs, Marker(call_marker))
        [claimed] = await q._backend.claim("w", ["default"], 1, 60.0)
        result = q.serializer.dumps(Marker(result_marker))
        await q._backend.finish([(claimed.lease, Outcome("succeeded", result=result))])
    return task_id


def test_unsigned_payloads_are_loaded_only_on_an_explicit_post(
    token_client: TestClient, db_path: Path, tmp_path: Path
) -> None:
    """With signing off, no GET (the page, its auto-refreshing fragment: what a
    cross-site <img> can request) unpickles a task's call or result; the "Show"
    POST does, and only with the token, the CSRF token and from the same site."""
    call_marker, result_marker = tmp_path / "call-unpickled", tmp_path / "result-unpickled"
    task_id = run(marked_task(db_path, call_marker, result_marker))
    auth = {"authorization": f"Bearer {TOKEN}"}
    for url in (f"/tasks/{task_id}", f"/live/tasks/{task_id}", "/", "/tasks", "/live/overview"):
        response = token_client.get(url, headers=auth)
        assert response.status_code == 200, url
    assert not call_marker.exists() and not result_marker.exists()
    page = token_client.get(f"/tasks/{task_id}", headers=auth).text
    assert "Arguments not loaded: payloads are not signed here" in page
    assert f'action="/tasks/{task_id}/show"' in page
    url = f"/tasks/{task_id}/show"
    refused = [
        token_client.get(url, headers=auth),  # not a GET
        token_client.post(url, data={"csrf": csrf(page)}),  # no access token
        token_client.post(url, data={}, headers=auth),  # no CSRF token
        token_client.post(url, data={"csrf": "guess"}, headers=auth),
        token_client.post(
            url, data={"csrf": csrf(page)}, headers={**auth, "origin": "https://evil.example"}
        ),
    ]
    assert [r.status_code for r in refused] == [405, 401, 403, 403, 403]
    assert not call_marker.exists() and not result_marker.exists()
    shown = token_client.post(url, data={"csrf": csrf(page)}, headers=auth)
    assert shown.status_code == 200 and 'id="call"' in shown.text and 'id="result"' in shown.text
    assert call_marker.exists() and result_marker.exists()
    assert 'id="revealed"' in shown.text and "data-live=" not in shown.text  # a snapshot


def test_signed_tasks_show_their_call_and_result_at_once(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a key, payloads are verified before a byte is unpickled (as `sitq
    inspect` shows them), so the page and its live part show them without asking."""
    monkeypatch.setenv("SITQ_SECRET_KEY", "k" * 32)
    task_id = run(enqueue(db_path, jobs.add, 1, 2))

    async def succeed() -> None:
        async with TaskQueue(db_path) as q:
            [claimed] = await q._backend.claim("w", ["default"], 1, 60.0)
            result = bound_dumps(q.serializer, 3, result_binding(task_id, claimed.func_name))
            await q._backend.finish([(claimed.lease, Outcome("succeeded", result=result))])

    run(succeed())
    with TestClient(create_app(DashboardConfig(db=str(db_path))), base_url=LOCAL) as client:
        page = client.get(f"/tasks/{task_id}").text
        assert "jobs.add(1, 2)" in page and re.search(r'<pre id="result">3</pre>', page)
        assert re.search(r'<pre id="result">3</pre>', client.get(f"/live/tasks/{task_id}").text)
        assert "/show" not in page


def test_unknown_task_and_bad_filters(client: TestClient) -> None:
    missing = client.get("/tasks/0123")
    assert missing.status_code == 404 and "no task with id" in missing.text
    bad = client.get("/tasks?status=done")
    assert bad.status_code == 400 and "unknown status" in bad.text
    # A page's reader passes no Python None: they leave the filter out.
    assert "or leave it out for every status" in bad.text and "None" not in bad.text
    assert client.get("/live/tasks?status=bogus").status_code == 400
    cursor = client.get("/tasks?cursor=nonsense&status=failed")
    assert cursor.status_code == 400 and "invalid listing cursor" in cursor.text


# -- bounded cost: what is not shown is not read -------------------------------------------


def test_the_overview_shows_the_busiest_queues_and_links_to_all(
    client: TestClient, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With more queues than it shows, the overview lists the busiest (a paused one
    first) with "and N more"; its totals count them all; /queues pages through all."""
    from sitq.dashboard import queries

    monkeypatch.setattr(queries, "QUEUES_SHOWN", 3)
    monkeypatch.setattr(queries, "QUEUES_PAGE_SIZE", 4)

    async def fill() -> None:
        async with TaskQueue(db_path) as q:
            for i in range(10):
                for _ in range(1 + (i == 7) * 5 + (i == 2) * 3):  # q7 busiest, then q2
                    await q.with_options(queue=f"q{i}").enqueue(jobs.add, 1, 2)
            await q.pause("q9")

    run(fill())
    for url in ("/", "/live/overview"):
        text = client.get(url).text
        shown = re.findall(r'<tr data-queue="([^"]+)"', text)
        assert shown == ["q2", "q7", "q9"], url  # paused, then most waiting; by name
        assert "and 7 more queues" in text and 'href="/queues"' in text
        footer = text.split("<tfoot>", 1)[1].split("</tfoot>", 1)[0]
        assert re.findall(r"<td class=\"num\">(\d+)</td>", footer)[0] == "18"  # every queue
    seen: list[str] = []
    url = "/queues"
    while url:
        text = client.get(url).text
        seen += re.findall(r'<tr data-queue="([^"]+)"', text)
        found = re.search(r'<a href="([^"]+)" id="next-page">', text)
        url = found.group(1) if found else ""
    assert seen == [f"q{i}" for i in range(10)]
    assert "page 3 of 3" in client.get("/queues?page=99").text  # clamped
    assert client.get("/queues?page=x").status_code == 400


def test_the_overview_reads_only_the_newest_batches(
    client: TestClient, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The overview asks the backend for the newest batches only (not all of them),
    and links to /batches, which pages through every one, newest first."""
    from sitq.dashboard import queries

    monkeypatch.setattr(queries, "RECENT_BATCHES", 3)
    monkeypatch.setattr(queries, "BATCHES_PAGE_SIZE", 2)

    async def fill() -> None:
        async with TaskQueue(db_path) as q:
            for i in range(5):
                await BatchStore.of(q).enqueue_in_batch(q, f"batch-{i}", jobs.add, [(i, i)])

    run(fill())
    asked: list[int | None] = []
    real = BatchStore.list_batches

    async def recording(self: BatchStore, limit: int | None = None, offset: int = 0) -> Any:
        asked.append(limit)
        return await real(self, limit=limit, offset=offset)

    monkeypatch.setattr(BatchStore, "list_batches", recording)
    for url in ("/", "/live/overview"):
        text = client.get(url).text.split('id="batches"', 1)[1]
        assert re.findall(r">(batch-\d)</a>", text) == ["batch-4", "batch-3", "batch-2"]
        assert 'href="/batches"' in text
    assert asked and None not in asked  # never every batch
    seen: list[str] = []
    url = "/batches"
    while url:
        text = client.get(url).text
        seen += re.findall(r">(batch-\d)</a>", text)
        found = re.search(r'<a href="([^"]+)" id="next-page">', text)
        url = found.group(1) if found else ""
    assert seen == [f"batch-{i}" for i in (4, 3, 2, 1, 0)]
    assert None not in asked


def test_a_result_over_the_limit_is_loaded_only_on_request(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signed, a small result shows by itself; one over the load limit is not read
    by the page nor its live refresh (its size shows), only by the explicit POST."""
    from sitq.dashboard import queries

    monkeypatch.setenv("SITQ_SECRET_KEY", "k" * 32)
    marker = tmp_path / "result-unpickled"
    big = (Marker(marker), b"x" * (queries.LOAD_LIMIT + 1))
    task_id = run(enqueue(db_path, jobs.add, 1, 2))

    async def succeed() -> None:
        async with TaskQueue(db_path) as q:
            [claimed] = await q._backend.claim("w", ["default"], 1, 60.0)
            result = bound_dumps(q.serializer, big, result_binding(task_id, claimed.func_name))
            await q._backend.finish([(claimed.lease, Outcome("succeeded", result=result))])

    run(succeed())
    with TestClient(create_app(DashboardConfig(db=str(db_path))), base_url=LOCAL) as client:
        for url in (f"/tasks/{task_id}", f"/live/tasks/{task_id}"):
            text = client.get(url).text
            assert 'id="result"' not in text and "1.0 MB stored, not loaded" in text, url
            assert "over the 1.0 MB a page loads by itself" in text
        assert not marker.exists()
        assert "jobs.add(1, 2)" in client.get(f"/tasks/{task_id}").text  # the call is small
        shown = show(client, task_id).text
        assert marker.exists() and re.search(r'<pre id="result">\(.*xxx', shown)


# -- listings and pagination ------------------------------------------------------------


def listed(client: TestClient, url: str) -> tuple[list[str], list[int]]:
    """Every task id a listing shows, following its 'Older' links; and page sizes."""
    ids: list[str] = []
    sizes: list[int] = []
    while url:
        text = client.get(url).text
        page = TASK_LINK.findall(text.split('<table class="tasks">', 1)[1])
        ids += page
        sizes.append(len(page))
        older = re.search(r'<a href="([^"]+)" id="older">', text)
        url = older.group(1).replace("&amp;", "&") if older else ""
    return ids, sizes


def test_listing_pages_through_every_task_once(client: TestClient, db_path: Path) -> None:
    async def fill() -> list[str]:
        async with TaskQueue(db_path) as q:
            return await q.enqueue_many(jobs.add, [(i, i) for i in range(120)])

    ids = run(fill())
    shown, sizes = listed(client, "/tasks")
    assert shown == ids[::-1]
    assert sizes[:3] == [50, 50, 20]


def test_listing_filters(client: TestClient, db_path: Path) -> None:
    mail = [run(enqueue(db_path, jobs.add, i, i, queue="mail")) for i in range(3)]
    other = run(enqueue(db_path, jobs.add, 0, 0, queue="other"))
    failed_id = run(finish_next(db_path, "mail", failed()))
    assert listed(client, "/tasks?queue=mail")[0] == mail[::-1]
    assert listed(client, "/tasks?queue=mail&status=queued")[0] == mail[:0:-1]
    assert listed(client, "/tasks?status=failed")[0] == [failed_id]
    assert listed(client, "/tasks?queue=other&status=")[0] == [other]
    assert listed(client, "/tasks?queue=nowhere")[0] == []


def progress_span(html: str) -> str:
    """The task_progress markup (a bar, done/total, message) in ``html``."""
    found = re.search(r'<span class="task-progress".*?</span></span>', html, re.S)
    assert found, "no progress shown"
    return found.group(0)


def row_of(html: str, task_id: str) -> str:
    """The listing row of ``task_id``."""
    return html.split(f'<tr data-task="{task_id}">', 1)[1].split("</tr>", 1)[0]


def test_the_running_listing_shows_each_tasks_progress_as_its_page_does(
    client: TestClient, db_path: Path, tmp_path: Path
) -> None:
    """A real worker runs a task that reports progress and waits, and one that
    reports none: /tasks?status=running (and its live part) shows the first's bar,
    count and message, the same markup as its task page, and says the other
    reported nothing."""
    gates, quiet_gate = tmp_path / "gates", tmp_path / "quiet-gate"
    gates.mkdir()
    reporting = run(enqueue(db_path, progress_jobs.in_parts, 4, str(gates)))
    quiet = run(enqueue(db_path, progress_jobs.report_nothing_until, str(quiet_gate)))
    worker = WorkerProcess(db_path, tmp_path, "--concurrency", "2").wait_started()
    try:

        def shown(url: str, wanted: str) -> Any:
            def look() -> bool:
                return wanted in client.get(url).text

            wait_until(look, 30, f"{wanted!r} on {url}")
            return client.get(url).text

        for url in ("/tasks?status=running", "/live/tasks?status=running"):
            text = shown(url, "1/4 (25%)")
            row = row_of(text, reporting)
            assert 'aria-label="25% done"' in row and 'class="bar-running"' in row
            assert "part 1 of 4" in row
            assert "none reported" in row_of(text, quiet)
            assert "<th>progress</th>" in text and "<th>error</th>" not in text
            # The same partial as the task page: one place draws a task's progress.
            page = client.get(f"/tasks/{reporting}").text
            assert progress_span(row) == progress_span(page)
        (gates / "1").touch()
        row = row_of(shown("/live/tasks?status=running", "2/4 (50%)"), reporting)
        assert 'aria-label="50% done"' in row and "part 2 of 4" in row
        # Other listings keep their finish and error columns.
        assert "<th>error</th>" in client.get("/tasks").text
        for name in ("2", "3", "4"):
            (gates / name).touch()
        quiet_gate.touch()
        running = "/tasks?status=running"
        wait_until(lambda: listed(client, running)[0] == [], 30, "both tasks to finish")
    finally:
        for name in ("1", "2", "3", "4"):
            (gates / name).touch()
        quiet_gate.touch()
        worker.stop()


def test_batch_listing_shows_progress_and_failed_items(client: TestClient, db_path: Path) -> None:
    async def fill() -> list[str]:
        async with TaskQueue(db_path) as q:
            return await BatchStore.of(q).enqueue_in_batch(
                q.with_options(queue="b"), "nightly", jobs.add, [(i, i) for i in range(4)]
            )

    ids = run(fill())
    failed_id = run(finish_next(db_path, "b", failed()))
    text = client.get("/tasks?batch=nightly").text
    assert "1 of 4 finished, 1 failed" in text and 'class="bar-failed"' in text
    assert listed(client, "/tasks?batch=nightly")[0] == ids
    assert listed(client, "/tasks?batch=nightly&status=failed")[0] == [failed_id]
    overview = client.get("/").text
    assert "nightly" in overview and "1 / 4" in overview


# -- actions and CSRF ------------------------------------------------------------------


def test_retry_needs_csrf_and_same_origin(client: TestClient, db_path: Path) -> None:
    run(enqueue(db_path, jobs.add, 1, 2))
    task_id = run(finish_next(db_path, "default", failed()))
    token = csrf(client.get(f"/tasks/{task_id}").text)
    url = f"/tasks/{task_id}/retry"
    no_token = client.post(url, data={}, follow_redirects=False)
    assert no_token.status_code == 403 and "CSRF" in no_token.text
    wrong = client.post(url, data={"csrf": "guess"}, follow_redirects=False)
    assert wrong.status_code == 403
    cross = client.post(
        url,
        data={"csrf": token},
        headers={"origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert cross.status_code == 403 and "another site" in cross.text
    fetch_site = client.post(
        url, data={"csrf": token}, headers={"sec-fetch-site": "cross-site"}, follow_redirects=False
    )
    assert fetch_site.status_code == 403
    assert run(status_of(db_path, task_id)) == "failed"  # nothing was refused halfway
    done = client.post(url, data={"csrf": token}, headers={"origin": LOCAL}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/tasks/{task_id}?done=retried"
    assert run(status_of(db_path, task_id)) == "queued"
    assert "Queued again." in client.get(done.headers["location"]).text


async def status_of(db: Path, task_id: str) -> str:
    async with TaskQueue(db) as q:
        return (await q.status(task_id)).value


def test_cancel_a_queued_task(client: TestClient, db_path: Path) -> None:
    task_id = run(enqueue(db_path, jobs.add, 1, 2))
    page = client.get(f"/tasks/{task_id}").text
    assert 'data-confirm="Cancel task' in page
    done = client.post(f"/tasks/{task_id}/cancel", data={"csrf": csrf(page)})
    assert done.status_code == 200 and "Cancelled." in done.text
    assert run(status_of(db_path, task_id)) == "cancelled"
    again = client.post(f"/tasks/{task_id}/cancel", data={"csrf": csrf(page)})
    assert "Not cancelled: it had already finished." in again.text


def test_retry_every_failure_of_a_queue(client: TestClient, db_path: Path) -> None:
    for queue in ("mail", "mail", "other"):
        run(enqueue(db_path, jobs.add, 1, 2, queue=queue))
    mail = [run(finish_next(db_path, "mail", failed())) for _ in range(2)]
    other = run(finish_next(db_path, "other", failed()))
    page = client.get("/").text
    assert 'action="/queues/mail/retry-failed"' in page
    done = client.post("/queues/mail/retry-failed", data={"csrf": csrf(page)})
    assert "Failed tasks of the queue queued again." in done.text
    assert [run(status_of(db_path, t)) for t in mail] == ["queued", "queued"]
    assert run(status_of(db_path, other)) == "failed"


# -- tokens --------------------------------------------------------------------------


def test_a_token_is_required_when_configured(token_client: TestClient) -> None:
    refused = token_client.get("/")
    assert refused.status_code == 401 and "access token" in refused.text
    assert token_client.get("/live/overview").status_code == 401
    assert token_client.get("/workflows/any").status_code == 401
    assert token_client.get("/live/workflows/any").status_code == 401
    assert token_client.get("/", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert token_client.get("/?token=wrong").status_code == 401
    bearer = token_client.get("/", headers={"authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200 and "Token required" in bearer.text


def test_the_token_in_the_url_becomes_a_cookie(token_client: TestClient) -> None:
    first = token_client.get(f"/tasks?status=failed&token={TOKEN}", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/tasks?status=failed"
    cookie = first.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert token_client.get("/").status_code == 200  # the cookie now carries it


def test_posts_need_the_token_too(token_client: TestClient, db_path: Path) -> None:
    task_id = run(enqueue(db_path, jobs.add, 1, 2))
    page = token_client.get(f"/tasks/{task_id}", headers={"authorization": f"Bearer {TOKEN}"})
    refused = token_client.post(f"/tasks/{task_id}/cancel", data={"csrf": csrf(page.text)})
    assert refused.status_code == 401
    assert run(status_of(db_path, task_id)) == "queued"
    pause = token_client.post("/queues/default/pause", data={"csrf": csrf(page.text)})
    assert pause.status_code == 401 and run(paused_queues(db_path)) == []


def test_without_a_token_only_loopback_names_are_answered(client: TestClient) -> None:
    rebound = client.get("/", headers={"host": "attacker.example:8765"})
    assert rebound.status_code == 421 and "--token" in rebound.text
    assert client.get("/", headers={"host": "localhost:8765"}).status_code == 200


# -- the command line ----------------------------------------------------------------


def test_cli_refuses_a_public_address_without_a_token(db_path: Path) -> None:
    result = CliRunner().invoke(dashboard, ["--db", str(db_path), "--host", "0.0.0.0"], env={})
    assert result.exit_code == 2
    assert "give a token with --token" in result.output


def test_cli_refuses_a_short_token_and_a_missing_database(tmp_path: Path) -> None:
    short = CliRunner().invoke(dashboard, ["--token", "abc"], env={})
    assert short.exit_code == 2 and "at least 16 characters" in short.output
    missing = CliRunner().invoke(dashboard, ["--db", str(tmp_path / "nope.db")], env={})
    assert missing.exit_code == 1 and "nope.db" in missing.output


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:s3cretpw@127.0.0.1:1/test",  # nothing listens there
        "postgresql://postgres:s3cretpw@127.0.0.1:5432/no_such_database",
        # The server quotes a bad setting's value, here one holding the URL.
        "postgresql://postgres:s3cretpw@127.0.0.1:5432/test"
        "?lock_timeout=postgres://postgres:s3cretpw@db",
    ],
)
def test_cli_never_shows_the_password_of_a_database_it_cannot_open(url: str) -> None:
    proc = subprocess.run(
        [SITQ, "dashboard", "--db", url],
        capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env(),
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("Error: ") and "Traceback" not in proc.stderr
    assert "s3cretpw" not in proc.stdout + proc.stderr


def test_python_dash_m_serves_help() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "sitq.dashboard", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "--token" in out and "--host" in out and "--port" in out


def test_the_command_loads_without_the_extra(tmp_path: Path) -> None:
    """`sitq` registers the command even where the extra is not installed: importing
    it loads no web framework, and running it then says which extra to install."""
    import subprocess
    import sys

    program = (
        "import sys\n"
        "sys.modules['starlette'] = sys.modules['uvicorn'] = None  # as if not installed\n"
        "from sitq.dashboard.cli import dashboard\n"
        "dashboard(['--db', sys.argv[1]])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program, str(tmp_path / "tasks.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "pip install 'sitq[dashboard]'" in result.stderr


async def test_every_page_on_both_backends(db_url: str) -> None:
    """The pages read through the public API only, so PostgreSQL serves them too."""
    async with TaskQueue(db_url) as queue:
        ids = await queue.with_options(queue="pg").enqueue_many(jobs.add, [(1, 2), (3, 4)])
        [claimed] = await queue._backend.claim("w", ["pg"], 1, 60.0)
        await queue._backend.finish([(claimed.lease, failed("ValueError: on pg"))])
    app = create_app(DashboardConfig(db=db_url))

    def browse() -> None:
        with TestClient(app, base_url=LOCAL) as test_client:
            assert 'data-queue="pg"' in test_client.get("/").text
            assert listed(test_client, "/tasks?queue=pg")[0] == ids[::-1]
            assert listed(test_client, "/tasks?status=failed")[0] == [ids[0]]
            assert "ValueError: on pg" in test_client.get(f"/tasks/{ids[0]}").text
            assert "jobs.add(1, 2)" in show(test_client, ids[0]).text

    await asyncio.to_thread(browse)


async def test_a_claimed_task_shows_as_queued_and_claimed(db_url: str) -> None:
    """A task a worker holds but has not started is counted queued, with the claim
    shown beside the count, on its worker's row and on its page."""
    async with TaskQueue(db_url) as queue:
        [task_id] = await queue.with_options(queue="held").enqueue_many(jobs.add, [(1, 2)])
        now = queue._backend.now()
        await queue._backend.register_worker(
            WorkerRecord("w1", "host", 1, ("held",), 1, now, now, None)
        )
        await queue._backend.claim("w1", ["held"], 1, 60.0)
    app = create_app(DashboardConfig(db=db_url))

    def browse() -> None:
        with TestClient(app, base_url=LOCAL) as test_client:
            page = test_client.get("/").text
            assert "(1 claimed)" in page and "1 claimed, not started" in page
            text = test_client.get(f"/tasks/{task_id}").text
            assert "claimed by worker w1, not started" in text
            assert listed(test_client, "/tasks?status=queued")[0] == [task_id]
            assert listed(test_client, "/tasks?status=running")[0] == []
            # The queues table and /metrics count it queued, not running.
            for url in ("/", "/queues"):
                row = test_client.get(url).text.split('data-queue="held"', 1)[1]
                counts = dict(re.findall(r'data-status="(\w+)"><a [^>]*>(\d+)</a>', row)[:5])
                assert counts["queued"] == "1" and counts["running"] == "0", (url, counts)
            values = scrape(test_client)
            held = (("queue", "held"),)
            assert values[("sitq_queue_tasks", (*held, ("status", "queued")))] == 1
            assert values[("sitq_queue_tasks", (*held, ("status", "running")))] == 0
            assert values[("sitq_running_tasks", held)] == 0

    await asyncio.to_thread(browse)


# -- workflow runs ----------------------------------------------------------------------


async def record_run(
    queue: TaskQueue,
    run_id: str,
    items: list[str],
    failures: dict[int, str],
    *,
    name: str = "nightly etl",
    step: str = "fetch",
    finish: bool = True,
    pid: int | None = None,
) -> None:
    """A workflow run recorded through TaskQueue's workflow methods, as sitq.workflow
    records one: a step over ``items`` whose ``failures`` failed with their error; the
    other items succeed, or (``finish=False``) stay pending in a running run."""
    blob = queue.serializer.dumps({})
    run = NewWorkflowRun(
        run_id,
        "etl.yaml",
        name,
        "steps: []",
        blob,
        "{'day': 1}",
        socket.gethostname(),
        pid or os.getpid(),
    )
    assert await WorkflowStore.of(queue).create_workflow_run(run)
    previews = [repr(item) for item in items]
    blob = queue.serializer.dumps(items)
    assert await WorkflowStore.of(queue).begin_workflow_step(run_id, step, 0, blob, previews, True)
    for index in range(len(items)):
        if index in failures:
            await WorkflowStore.of(queue).workflow_item_finished(
                run_id, step, index, "failed", attempts=2, error=failures[index]
            )
        elif finish:
            await WorkflowStore.of(queue).workflow_item_finished(
                run_id, step, index, "succeeded", attempts=1
            )
    if finish:
        status = "partial" if failures else "succeeded"
        await WorkflowStore.of(queue).update_workflow_step(run_id, step, status)
        await WorkflowStore.of(queue).update_workflow_run(run_id, status)


def step_cells(text: str, step: str) -> str:
    found = re.search(rf'data-step="{step}">(.*?)</(tr|div)>', text, re.S)
    assert found, f"no step {step!r} shown"
    return found.group(1)


async def test_workflow_runs_paused_queues_limits_and_schedules_on_both_backends(
    db_url: str,
) -> None:
    """The overview lists runs with a bar per step, paused queues, limits and
    schedules; the run page its steps and failed items: on SQLite and PostgreSQL."""
    async with TaskQueue(db_url) as queue:
        await queue.with_options(queue="mail").enqueue(jobs.add, 1, 2)
        await record_run(queue, "run-1", ["x"], {})
        await record_run(queue, "run-2", ["a", "b", "c", "d"], {2: "ValueError: c is bad"})
        await queue.pause("mail")
        await queue.pause("idle")  # paused, with no task at all
        await queue.set_limit("api", max_running=2, max_starts=10, per=60)
        now = queue._backend.now()
        await queue._backend.advance_schedule("nightly-report", "0 3 * * *", now, now + 3600, None)
    app = create_app(DashboardConfig(db=db_url))

    def browse() -> None:
        with TestClient(app, base_url=LOCAL) as test_client:
            for url in ("/", "/live/overview"):
                text = test_client.get(url).text
                runs = text.split('id="runs"', 1)[1]
                assert runs.index("run-2") < runs.index("run-1")  # newest first
                assert "status-partial" in runs and "nightly etl" in runs
                cells = step_cells(runs, "fetch")
                assert "4 / 4" in cells and "1 failed" in cells and 'class="bar-failed"' in cells
                assert re.search(r'<tr data-queue="mail" class="queue-paused" data-paused', text)
                assert re.search(r'<tr data-queue="idle" class="queue-paused" data-paused', text)
                assert 'action="/queues/mail/resume"' in text
                assert "api" in text.split('id="limits"', 1)[1]
                schedules = text.split('id="schedules"', 1)[1]
                assert "nightly-report" in schedules and "0 3 * * *" in schedules
                assert "(in 59m)" in schedules or "(in 60m)" in schedules
            for url in ("/workflows/run-2", "/live/workflows/run-2"):
                page = test_client.get(url)
                assert page.status_code == 200
                assert ("<html" in page.text) == (not url.startswith("/live"))
                assert "status-partial" in page.text and "4 / 4" in step_cells(page.text, "fetch")
                failed_items = page.text.split('id="failed-item-list"', 1)[1]
                assert "ValueError: c is bad" in failed_items and "&#39;c&#39;" in failed_items
                assert "&#39;a&#39;" not in failed_items  # only the failed ones
            missing = test_client.get("/workflows/nope")
            assert missing.status_code == 404 and "no workflow run" in missing.text

    await asyncio.to_thread(browse)


def test_a_running_run_shows_its_progress_live(client: TestClient, db_path: Path) -> None:
    async def start() -> None:
        async with TaskQueue(db_path) as queue:
            await record_run(queue, "live-run", ["a", "b", "c"], {}, finish=False)

    async def finish(index: int, status: str) -> None:
        async with TaskQueue(db_path) as queue:
            error = "OSError: disk full" if status == "failed" else None
            await WorkflowStore.of(queue).workflow_item_finished(
                "live-run", "fetch", index, status, attempts=1, error=error
            )

    run(start())
    page = client.get("/workflows/live-run").text
    assert 'data-live="/live/workflows/live-run"' in page
    assert "status-running" in page and "0 / 3" in step_cells(page, "fetch")
    assert "No failed items." in page
    run(finish(0, "succeeded"))
    run(finish(1, "failed"))
    live = client.get("/live/workflows/live-run").text
    assert "2 / 3" in step_cells(live, "fetch") and "OSError: disk full" in live
    assert "1 failed" in step_cells(client.get("/live/overview").text, "fetch")


def test_workflows_lists_the_runs_with_or_without_a_slash(
    client: TestClient, db_path: Path
) -> None:
    empty = client.get("/workflows", follow_redirects=False)
    assert empty.status_code == 200 and 'id="no-runs"' in empty.text

    async def start() -> None:
        async with TaskQueue(db_path) as queue:
            await record_run(queue, "listed-run", ["a", "b"], {}, finish=False)

    run(start())
    slash = client.get("/workflows/", follow_redirects=False)
    assert slash.status_code == 308 and slash.headers["location"].endswith("/workflows")
    listed = client.get("/workflows/")
    assert listed.status_code == 200 and listed.url.path == "/workflows"
    assert 'href="/workflows/listed-run"' in listed.text and "0 / 2" in listed.text
    assert 'href="/workflows">more</a>' in client.get("/").text


def test_a_run_whose_process_is_gone_shows_as_interrupted(
    client: TestClient, db_path: Path
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(60)

    async def start() -> None:
        async with TaskQueue(db_path) as queue:
            await record_run(queue, "killed", ["a"], {}, finish=False, pid=gone.pid)
            await record_run(queue, "alive", ["a"], {}, finish=False)

    run(start())
    overview = client.get("/").text
    killed = re.search(r'<tr data-run="killed">(.*?)</tr>', overview, re.S).group(1)  # type: ignore[union-attr]
    alive = re.search(r'<tr data-run="alive">(.*?)</tr>', overview, re.S).group(1)  # type: ignore[union-attr]
    assert "status-interrupted" in killed and "status-running" in alive
    page = client.get("/workflows/killed").text
    assert "sitq workflow run etl.yaml --resume killed" in page


def test_a_run_page_pages_through_its_failed_items(client: TestClient, db_path: Path) -> None:
    count = 120

    async def fill() -> None:
        async with TaskQueue(db_path) as queue:
            failures = {i: f"ValueError: item {i} failed" for i in range(count)}
            await record_run(queue, "many", [f"v{i}" for i in range(count)], failures)

    run(fill())
    seen: list[int] = []
    url = "/workflows/many"
    pages = 0
    while url:
        text = client.get(url).text
        rows = text.split('id="failed-item-list"', 1)[1].split("</table>", 1)[0]
        seen += [int(i) for i in re.findall(r"ValueError: item (\d+) failed", rows)]
        pages += 1
        found = re.search(r'<a href="([^"]+)" id="next-failures">', text)
        url = found.group(1) if found else ""
    assert seen == list(range(count)) and pages == 3
    assert "Page 3 of 3" in client.get("/workflows/many?page=9").text  # clamped
    assert client.get("/workflows/many?page=x").status_code == 400


def test_workflow_names_and_errors_are_escaped(client: TestClient, db_path: Path) -> None:
    evil = "<script>alert(1)</script>"

    async def fill() -> None:
        async with TaskQueue(db_path) as queue:
            await record_run(queue, evil, [evil], {0: f"ValueError: {evil}"}, name=evil, step=evil)

    run(fill())
    for url in ("/", "/live/overview", "/workflows/" + quote(evil, safe="")):
        response = client.get(url)
        assert response.status_code == 200, url
        assert (
            evil not in response.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
        )
    assert 'href="/workflows/%3Cscript%3Ealert%281%29%3C%2Fscript%3E"' in client.get("/").text


def test_step_counts_are_read_again_only_when_they_may_have_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A settled step's items are read once; a running one's again once due (ten
    times what its last read took), never more often."""
    from sitq.dashboard.workflows import WorkflowItems

    reads: list[str] = []

    class Queue:  # stands for a queue's WorkflowStore: the reads are counted
        async def list_workflow_items(self, run_id: str, step: str) -> list[Any]:
            reads.append(step)
            clock.now += 0.5  # each read "takes" half a second
            return []

    monkeypatch.setattr(WorkflowStore, "of", staticmethod(lambda queue: queue))

    class Clock:
        now = 100.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    items = WorkflowItems(clock=clock)
    done_run = run_record("r1", "succeeded")
    running_run = run_record("r2", "running")
    done_step = step_record("a", "succeeded")
    running_step = step_record("b", "running")
    queue: Any = Queue()
    for _ in range(3):
        run(items.progress(queue, done_run, done_step))
    assert reads == ["a"]
    run(items.progress(queue, running_run, running_step))
    run(items.progress(queue, running_run, running_step))  # not due: 0 s after a 0.5 s read
    assert reads == ["a", "b"]
    clock.now += 5.0
    run(items.progress(queue, running_run, running_step))
    assert reads == ["a", "b", "b"]
    resumed = dataclasses.replace(done_step, status="running", finished_at=None)
    run(items.progress(queue, dataclasses.replace(done_run, status="running"), resumed))
    assert reads == ["a", "b", "b", "a"]  # a resume changes the stored state


def run_record(run_id: str, status: str) -> Any:
    from sitq.workflow.store import WorkflowRunRecord

    return WorkflowRunRecord(
        run_id, "w.yaml", None, "", b"", "{}", status, None, "elsewhere", 1, 1.0, 1.0, None
    )


def step_record(name: str, status: str) -> Any:
    from sitq.workflow.store import WorkflowStepRecord

    return WorkflowStepRecord(name, 0, status, 3, True, None, None, 1.0, None)


# -- pausing queues ----------------------------------------------------------------------


async def paused_queues(db: Path) -> list[str]:
    async with TaskQueue(db) as q:
        return await q.paused()


def test_pause_and_resume_need_csrf(client: TestClient, db_path: Path) -> None:
    run(enqueue(db_path, jobs.add, 1, 2, queue="mail/eu"))
    page = client.get("/").text
    assert (
        'action="/queues/mail%2Feu/pause"' in page and 'data-confirm="Pause queue mail/eu?' in page
    )
    url = "/queues/mail%2Feu/pause"
    assert client.post(url, data={}, follow_redirects=False).status_code == 403
    assert client.post(url, data={"csrf": "guess"}, follow_redirects=False).status_code == 403
    cross = client.post(url, data={"csrf": csrf(page)}, headers={"origin": "https://evil.example"})
    assert cross.status_code == 403
    assert run(paused_queues(db_path)) == []
    done = client.post(url, data={"csrf": csrf(page)}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/?done=paused"
    assert run(paused_queues(db_path)) == ["mail/eu"]
    page = client.get("/?done=paused").text
    assert "Paused: workers take no new tasks" in page
    assert re.search(r'<tr data-queue="mail/eu" class="queue-paused"', page)
    assert 'action="/queues/mail%2Feu/resume"' in page and "/pause" not in page
    resume = "/queues/mail%2Feu/resume"
    assert client.post(resume, data={}).status_code == 403
    assert run(paused_queues(db_path)) == ["mail/eu"]
    assert "Resumed" in client.post(resume, data={"csrf": csrf(page)}).text
    assert run(paused_queues(db_path)) == []
    assert "It was not paused." in client.post(resume, data={"csrf": csrf(page)}).text


# -- the `sitq dashboard` process --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class DashboardProcess:
    """A real `sitq dashboard` process, started as users start it."""

    def __init__(self, db: Path | str, log_dir: Path, *args: str, **popen: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"dashboard-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [SITQ, "dashboard", "--db", str(db), "--port", str(self.port), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=popen.pop("env", None) or subprocess_env(),
                cwd=popen.pop("cwd", log_dir),
                **popen,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **headers: str) -> tuple[int, str]:
        """Status and body of a GET (errors answer too)."""
        request = urllib.request.Request(self.url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_answering(self) -> DashboardProcess:
        def answers() -> bool:
            assert self.process.poll() is None, self.output()
            try:
                return self.get("/")[0] in (200, 401)
            except OSError:
                return False

        wait_until(answers, 30, "the dashboard to answer")
        return self

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def serve_dashboard(tmp_path: Path) -> Iterator[Any]:
    """Start `sitq dashboard` processes; all are killed at teardown."""
    started: list[DashboardProcess] = []

    def start(db: Path | str, *args: str, **popen: Any) -> DashboardProcess:
        process = DashboardProcess(db, tmp_path, *args, **popen)
        started.append(process)
        return process.wait_answering()

    yield start
    for process in started:
        process.stop()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_stop_it_cleanly(
    serve_dashboard: Any, db_path: Path, signum: int
) -> None:
    run(create_db(db_path))
    dashboard_process = serve_dashboard(db_path)
    assert "(Ctrl-C to stop)" in dashboard_process.output()
    dashboard_process.process.send_signal(signum)
    assert dashboard_process.process.wait(30) == 0, dashboard_process.output()
    out = dashboard_process.output()
    assert "Aborted!" not in out and "Traceback" not in out
    assert out.rstrip().endswith("sitq dashboard stopped")


def test_a_busy_port_is_one_clear_line_before_anything_is_announced(db_path: Path) -> None:
    run(create_db(db_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = subprocess.run(
            [SITQ, "dashboard", "--db", str(db_path), "--port", port],
            capture_output=True,
            text=True,
            timeout=60,
            env=subprocess_env(),
        )
    assert done.returncode != 0
    assert f"port {port} is in use" in done.stderr and "pass --port N" in done.stderr
    assert "Ctrl-C to stop" not in done.stderr and "Errno" not in done.stderr


def test_a_wildcard_host_is_announced_by_the_machines_name(
    serve_dashboard: Any, db_path: Path
) -> None:
    run(create_db(db_path))
    shown = serve_dashboard(db_path, "--host", "0.0.0.0", "--token", "generate")
    [line] = [x for x in shown.output().splitlines() if "Ctrl-C to stop" in x]
    names = [n for n in (socket.getfqdn(), socket.gethostname()) if n.split(".")[0] != "localhost"]
    assert f"http://{(names or ['<this host>'])[0]}:{shown.port}/?token=" in line
    assert "0.0.0.0" not in line


APP_MODULE = """
def greet(name):
    return f"hello {name}"
"""


def test_task_pages_load_the_apps_modules_from_its_directory(
    serve_dashboard: Any, tmp_path: Path
) -> None:
    """Run from the app's own directory (as `sitq worker` is), the dashboard can
    load a call that names the app's module; --import names more, and a module
    that cannot be imported is one clear line."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "myapp.py").write_text(APP_MODULE)
    enqueue_call = (
        "import myapp\n"
        "from sitq import SyncTaskQueue\n"
        "with SyncTaskQueue('tasks.db') as q:\n"
        "    print(q.enqueue(myapp.greet, 'world'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SITQ_SECRET_KEY")}
    task_id = subprocess.run(
        [sys.executable, "-c", enqueue_call],
        cwd=app_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    process = serve_dashboard("tasks.db", "--import", "myapp", cwd=app_dir, env=env)
    status, page = process.get(f"/tasks/{task_id}")
    assert status == 200
    body = urllib.parse.urlencode({"csrf": csrf(page)}).encode()
    request = urllib.request.Request(f"{process.url}/tasks/{task_id}/show", data=body)
    with urllib.request.urlopen(request, timeout=10) as response:
        shown = response.read().decode()
    assert "myapp.greet(&#39;world&#39;)" in shown, shown
    assert "ModuleNotFoundError" not in shown
    failed_start = subprocess.run(
        [SITQ, "dashboard", "--db", "tasks.db", "--import", "nosuchmodule", "--port", "0"],
        cwd=app_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed_start.returncode == 1
    assert "cannot import module 'nosuchmodule'" in failed_start.stderr
    assert "Traceback" not in failed_start.stderr


# -- Prometheus ---------------------------------------------------------------------------


def scrape(
    client: TestClient, **headers: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics parsed with prometheus_client's parser: value by (name, labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def test_metrics_match_the_database_on_both_backends(db_url: str, tmp_path: Path) -> None:
    """Depth, oldest wait, failures, retries, running tasks and live workers, as a
    Prometheus scrape reads them, match what was stored; one count sample serves
    the overview and every scrape while it is fresh."""
    from sitq.dashboard import history

    began = time.time()
    async with TaskQueue(db_url) as queue:
        await queue.with_options(queue="mail").enqueue_many(jobs.add, [(1, 1)] * 3)
        await queue.with_options(queue='re"ports').enqueue(jobs.add, 1, 2)
        [first] = await queue._backend.claim("w", ["mail"], 1, 60.0)
        await queue._backend.finish([(first.lease, failed("ValueError: boom"))])
        [second] = await queue._backend.claim("w", ["mail"], 1, 60.0)
        retry = Outcome("queued", error="ValueError: again", retry_at=queue._backend.now() + 3600)
        await queue._backend.finish([(second.lease, retry)])
        [third] = await queue._backend.claim("w", ['re"ports'], 1, 60.0)
        await queue._backend.finish((), [(third.lease, queue._backend.now())])  # running
    worker = WorkerProcess(db_url, tmp_path, "--queue", "idle").wait_started()
    app = create_app(DashboardConfig(db=db_url))
    counted: list[int] = []

    def browse() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with TestClient(app, base_url=LOCAL) as client:
            real = client.app.state.history._count  # type: ignore[attr-defined]

            async def counting() -> Any:
                counted.append(1)
                return await real()

            client.app.state.history._count = counting  # type: ignore[attr-defined]
            assert 'data-queue="mail"' in client.get("/").text
            scrape(client)
            return scrape(client)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(history, "MIN_INTERVAL", 3600.0)  # the sample stays fresh
            values = await asyncio.to_thread(browse)
    finally:
        worker.stop()
    assert counted == [1]  # the overview's sample served both scrapes

    def value(name: str, **labels: str) -> float:
        return values[(name, tuple(sorted(labels.items())))]

    assert value("sitq_queue_tasks", queue="mail", status="queued") == 2
    assert value("sitq_queue_tasks", queue="mail", status="failed") == 1
    assert value("sitq_queue_tasks", queue='re"ports', status="running") == 1
    assert value("sitq_queue_depth", queue="mail") == 2
    assert value("sitq_queue_failed_tasks", queue="mail") == 1
    assert value("sitq_queue_retrying_tasks", queue="mail") == 1
    assert value("sitq_running_tasks", queue='re"ports') == 1
    assert value("sitq_workers", state="alive") == 1
    assert value("sitq_workers", state="dead") == 0
    assert 0 <= value("sitq_queue_oldest_wait_seconds", queue="mail") <= time.time() - began + 1
    assert ("sitq_queue_oldest_wait_seconds", (("queue", 're"ports'),)) not in values


async def test_finished_per_minute_is_a_real_count_of_the_last_minute_on_both_backends(
    db_url: str,
) -> None:
    """Tasks finished before the dashboard started count, tasks finished over a
    minute ago do not, and a few finished between two close samples are counted as
    they are, not extrapolated to a rate."""
    from sitq.dashboard import history

    async with TaskQueue(db_url) as queue:
        backend = queue._backend
        mail = queue.with_options(queue="mail")
        await mail.enqueue_many(jobs.add, [(1, 1)] * 7)
        claimed = await backend.claim("w", ["mail"], 7, 60.0)
        real_now = backend.now
        backend.now = lambda: real_now() - 120.0  # type: ignore[method-assign]
        assert await backend.finish([(t.lease, Outcome("succeeded")) for t in claimed[:2]])
        backend.now = real_now  # type: ignore[method-assign]
        outcomes = [Outcome("succeeded")] * 4 + [failed()]
        await backend.finish([(t.lease, o) for t, o in zip(claimed[2:], outcomes, strict=True)])
        await queue.with_options(queue="later").enqueue_many(jobs.add, [(1, 1)] * 5)
    app = create_app(DashboardConfig(db=db_url))

    def browse() -> tuple[dict[Any, float], dict[Any, float]]:
        with TestClient(app, base_url=LOCAL) as client:
            before = scrape(client)

            async def finish_later() -> None:
                async with TaskQueue(db_url) as queue:
                    later = await queue._backend.claim("w", ["later"], 5, 60.0)
                    await queue._backend.finish([(t.lease, Outcome("succeeded")) for t in later])

            run(finish_later())
            return before, scrape(client)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(history, "MIN_INTERVAL", 0.0)  # every scrape counts again,
        patch.setattr(history, "COUNT_SHARE", float("inf"))  # however long a count took
        before, after = await asyncio.to_thread(browse)
    per_minute = "sitq_queue_finished_per_minute"
    assert before[(per_minute, (("queue", "mail"),))] == 5  # not the 2 from 2 minutes ago
    assert before[("sitq_queue_failed_ratio", (("queue", "mail"),))] == 0.2
    assert before[(per_minute, (("queue", "later"),))] == 0
    assert after[(per_minute, (("queue", "later"),))] == 5
    assert after[(per_minute, (("queue", "mail"),))] == 5


def test_metrics_follow_the_token_rules(token_client: TestClient, client: TestClient) -> None:
    assert token_client.get("/metrics").status_code == 401
    assert (
        token_client.get("/metrics", headers={"authorization": "Bearer wrong"}).status_code == 401
    )
    assert scrape(token_client, authorization=f"Bearer {TOKEN}") is not None
    rebound = client.get("/metrics", headers={"host": "attacker.example:8765"})
    assert rebound.status_code == 421
    assert ("sitq_workers", (("state", "alive"),)) in scrape(client)


async def test_what_the_dashboard_asks_of_both_backends(db_url: str) -> None:
    """A page of batches, and a task's sizes without its result: on SQLite and
    PostgreSQL alike."""
    async with TaskQueue(db_url) as queue:
        for i in range(5):
            await BatchStore.of(queue).enqueue_in_batch(queue, f"b{i}", jobs.add, [(i, i)])
        backend = queue._backend
        batches = BatchStore.of(queue)
        assert [b.id for b in await batches.list_batches()] == ["b4", "b3", "b2", "b1", "b0"]
        page = await batches.list_batches(limit=2, offset=1)
        assert [b.id for b in page] == ["b3", "b2"]
        assert [b.id for b in await batches.list_batches(limit=9, offset=4)] == ["b0"]
        [claimed] = await backend.claim("w", ["default"], 1, 60.0)
        result = queue.serializer.dumps(b"r" * 5000)
        await backend.finish([(claimed.lease, Outcome("succeeded", result=result))])
        light = (await backend.get_tasks([claimed.id], with_result=False))[claimed.id]
        assert light.result is None and light.payload is None
        assert light.result_size == len(result) and light.payload_size
        full = (await backend.get_tasks([claimed.id], with_payload=True))[claimed.id]
        assert full.result == result and full.payload_size == len(full.payload or b"")


def test_task_page_links_parents_and_dependents(client: TestClient, db_path: Path) -> None:
    async def make() -> tuple[str, str]:
        async with TaskQueue(db_path) as q:
            parent = await q.enqueue(jobs.add, 1, 2)
            child = await q.with_options(depends_on=[parent]).enqueue(jobs.add, 3, 4)
            return parent, child

    parent, child = run(make())
    text = client.get(f"/tasks/{child}").text
    assert f'<a href="/tasks/{parent}">{parent}</a>' in text
    assert "waiting for 1 of 1" in text and "once its parents have finished" in text
    assert f'<a href="/tasks/{child}">{child}</a>' in client.get(f"/tasks/{parent}").text
