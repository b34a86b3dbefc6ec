"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright):
counts change as a real `sitq worker` drains tasks, a failed task's traceback is
shown, and its retry succeeds, all without reloading the page. The run takes the
screenshots the README shows: into a scratch folder, and into the committed
docs/screenshots/ only with SITQ_REFRESH_SCREENSHOTS=1 (`make screenshots`), so
testing leaves a checkout clean.

Without Chromium these tests skip with the reason, except under CI=true, where
they fail: CI must run them (.ci/run installs Chromium).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jobs
import progress_jobs
import pytest
from support import TESTS_DIR, WorkerProcess, subprocess_env, wait_until

from sitq import SyncTaskQueue, TaskQueue
from sitq.batch import BatchStore
from sitq.workflow import Workflow

CHROMIUM = os.environ.get("SITQ_TEST_CHROMIUM", "/usr/bin/chromium")
#: The committed screenshots the README shows.
DOCS_SCREENSHOTS = TESTS_DIR.parent / "docs" / "screenshots"
#: Set to 1 to refresh them (`make screenshots`); otherwise they are left alone.
REFRESH_ENV = "SITQ_REFRESH_SCREENSHOTS"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Generous: the machine is shared and may be loaded.
DEADLINE_MS = 30_000


def chromium_missing() -> str | None:
    """None if Chromium and Playwright are here, else why not. Under CI=true their
    absence is an error, not a reason to skip."""
    reason = None
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SITQ_TEST_CHROMIUM)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "Playwright is not installed (pip install -e '.[dev]')"
    if reason and os.environ.get("CI"):
        raise RuntimeError(f"{reason}; CI must run the browser tests")
    return reason


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = chromium_missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


def committed_screenshots() -> dict[str, str]:
    return {
        shot.name: hashlib.sha256(shot.read_bytes()).hexdigest()
        for shot in sorted(DOCS_SCREENSHOTS.glob("*.png"))
    }


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where this run's screenshots go: docs/screenshots/ when refreshing on purpose,
    else a scratch folder; and, unless refreshing, the committed ones must come out
    of the tests unchanged."""
    if os.environ.get(REFRESH_ENV) == "1":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        yield DOCS_SCREENSHOTS
        return
    before = committed_screenshots()
    yield tmp_path_factory.mktemp("screenshots")
    assert committed_screenshots() == before, (
        f"the browser tests changed docs/screenshots/ without {REFRESH_ENV}=1"
    )


@pytest.fixture
def page(browser: Any, serve: Callable[[], str]) -> Iterator[Any]:
    """A fresh browser tab, closed before the dashboard stops; it must log no error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(DEADLINE_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield tab
    context.close()
    assert not errors, f"the page logged errors: {errors}"


def options(port: int) -> list[str]:
    """The dashboard's options: this port, and quick refreshes."""
    return ["--port", str(port), "--refresh", "0.5"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def serve(db_path: Path, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Start `python -m sitq.dashboard` on ``db_path``; returns its URL once it answers."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> str:
        port = free_port()
        log = open(tmp_path / "dashboard.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [sys.executable, "-m", "sitq.dashboard", "--db", str(db_path), *options(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=subprocess_env(),
        )
        started.append(process)
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            assert process.poll() is None, (tmp_path / "dashboard.log").read_text()
            try:
                with urllib.request.urlopen(url + "/", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_until(answers, 30, "the dashboard to answer")
        return url

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture
def start_worker(db_path: Path, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        worker = WorkerProcess(db_path, tmp_path, *args)
        workers.append(worker)
        return worker.wait_started()

    yield start
    for worker in workers:
        worker.stop()


#: A small workflow: six items, one of which fails (the others still run).
IMPORT_WORKFLOW = """
name: nightly import
steps:
  - name: load
    task: batch
    inputs:
      items: "{{ range(6) | list }}"
      batch_size: 3
      continue_on_error: true
      task:
        type: python
        code: |
          if item == 4:
              raise ValueError(f"item {item} is bad")
          return item * 2
"""


def in_thread(function: Callable[[], Any]) -> Any:
    """``function()`` in another thread: Playwright's sync API holds this thread's
    event loop, so asyncio.run cannot be called here."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(function).result(timeout=60)


def sync_queue(db_path: Path, call: Callable[[SyncTaskQueue], Any]) -> Any:
    """What ``call(queue)`` returns, on a SyncTaskQueue of ``db_path`` used from
    another thread (SyncTaskQueue refuses a thread whose event loop is running)."""

    def main() -> Any:
        with SyncTaskQueue(db_path) as queue:
            return call(queue)

    return in_thread(main)


def with_queue(db_path: Path, call: Callable[[TaskQueue], Awaitable[Any]]) -> Any:
    """What ``await call(queue)`` returns, on a TaskQueue of ``db_path``."""

    async def main() -> Any:
        async with TaskQueue(db_path) as queue:
            return await call(queue)

    return in_thread(lambda: asyncio.run(main()))


def run_workflow(db_path: Path) -> str:
    """Run IMPORT_WORKFLOW to its end in this process, recorded in ``db_path``; its run
    id."""
    workflow = Workflow.from_string(IMPORT_WORKFLOW, "import.yaml")
    report = in_thread(lambda: workflow.run(db=db_path, executor="local"))
    assert report.status == "partial", report
    return report.run_id


def queued_cell(page: Any, queue: str, status: str) -> Any:
    return page.locator(f'tr[data-queue="{queue}"] td[data-status="{status}"]')


def test_counts_change_as_a_worker_drains(
    page: Any,
    db_path: Path,
    serve: Callable[[], str],
    start_worker: Callable[..., WorkerProcess],
    screenshots: Path,
) -> None:
    from playwright.sync_api import expect

    def enqueue() -> None:
        with SyncTaskQueue(db_path) as queue:
            # 300 tasks of 30 ms on 4 slots: a drain of about two seconds, long
            # enough for the trend chart to show it.
            queue.enqueue_many(jobs.sync_sleep, [0.03] * 300)
            mail = queue.with_options(queue="mail")
            newsletter = BatchStore(queue.store_session()).appender("newsletter")
            mail.enqueue_many(jobs.add, [(i, 1) for i in range(40)], alongside=newsletter)
            failing = ["mailbox full", "no such user"]
            mail.enqueue_many(jobs.fail, failing, alongside=newsletter)

    in_thread(enqueue)
    with_queue(db_path, lambda q: q.set_limit("smtp", max_running=2, max_starts=100, per=60))
    run_workflow(db_path)  # for the screenshot: a run with a failed item
    url = serve()
    page.goto(url + "/")
    expect(queued_cell(page, "default", "queued")).to_have_text("300")
    expect(queued_cell(page, "default", "succeeded")).to_have_text("0")
    expect(page.locator("#workers")).to_contain_text("No worker running")
    page.evaluate("window.sitqSamePage = true")  # gone if the page reloads

    start_worker("--queue", "default", "--queue", "mail", "--concurrency", "4")
    expect(queued_cell(page, "default", "succeeded")).to_have_text("300")
    expect(queued_cell(page, "default", "queued")).to_have_text("0")
    expect(queued_cell(page, "mail", "failed")).to_have_text("2")
    expect(page.locator("#workers .state-alive")).to_have_count(1)
    expect(page.locator("#failures")).to_contain_text("mailbox full")
    expect(page.locator("#batches")).to_contain_text("42 / 42")
    assert page.evaluate("window.sitqSamePage") is True, "the page was reloaded"
    expect(page.locator("#live-status")).to_contain_text("live, updated")

    page.screenshot(path=str(screenshots / "overview.png"), full_page=True)


def test_a_failed_task_shows_its_traceback_and_retry_succeeds(
    page: Any,
    db_path: Path,
    tmp_path: Path,
    serve: Callable[[], str],
    start_worker: Callable[..., WorkerProcess],
    screenshots: Path,
) -> None:
    from playwright.sync_api import expect

    counter = str(tmp_path / "counter")

    task_id = sync_queue(db_path, lambda q: q.enqueue(jobs.flaky, counter, 1))  # fails once
    start_worker()
    url = serve()
    page.goto(url + "/")
    failure = page.locator("#failures a", has_text="jobs.flaky")
    expect(failure).to_have_count(1)
    failure.click()
    expect(page).to_have_url(f"{url}/tasks/{task_id}")
    expect(page.locator("#task-status")).to_have_text("failed")
    expect(page.locator("#traceback")).to_contain_text("Traceback (most recent call last)")
    expect(page.locator("#traceback")).to_contain_text("RuntimeError: flaky failure number 1")
    # Unsigned: the call is loaded (unpickled) only on request.
    expect(page.locator("#call")).to_contain_text("not signed here")
    page.get_by_role("button", name="Show arguments and result").click()
    expect(page.locator("#call")).to_contain_text(f"jobs.flaky('{counter}', 1)")
    page.screenshot(path=str(screenshots / "failed-task.png"), full_page=True)

    questions: list[str] = []

    def answer(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.on("dialog", answer)
    page.get_by_role("button", name="Retry").click()
    expect(page.locator("#notice")).to_have_text("Queued again.")
    assert questions == [f"Run task {task_id} again?"]
    page.evaluate("window.sitqSamePage = true")
    expect(page.locator("#task-status")).to_have_text("succeeded")
    expect(page.locator("#result-not-loaded")).to_contain_text("not signed here")
    expect(page.locator("#traceback")).to_have_count(0)
    assert page.evaluate("window.sitqSamePage") is True, "the page was reloaded"
    page.locator("#result-not-loaded + form button").click()
    expect(page.locator("#result")).to_have_text("2")
    assert Path(counter).read_text() == "2"


def test_a_declined_confirmation_changes_nothing(
    page: Any, db_path: Path, serve: Callable[[], str]
) -> None:
    from playwright.sync_api import expect

    task_id = sync_queue(db_path, lambda q: q.enqueue(jobs.add, 1, 2))
    url = serve()
    page.goto(f"{url}/tasks/{task_id}")
    page.on("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#task-status")).to_have_text("queued")
    assert sync_queue(db_path, lambda q: q.status(task_id)).value == "queued"
    assert page.url == f"{url}/tasks/{task_id}"
    expect(page.locator("#notice")).to_have_count(0)


def test_a_workflow_runs_progress_shows_and_pause_marks_the_queue(
    page: Any, db_path: Path, serve: Callable[[], str], screenshots: Path
) -> None:
    from playwright.sync_api import expect

    sync_queue(db_path, lambda q: q.with_options(queue="mail").enqueue(jobs.add, 1, 2))
    url = serve()
    page.goto(url + "/")
    expect(queued_cell(page, "mail", "queued")).to_have_text("1")
    expect(page.locator("#runs")).to_have_count(0)
    page.evaluate("window.sitqSamePage = true")

    run_id = run_workflow(db_path)
    step = page.locator(f'#runs tr[data-run="{run_id}"] [data-step="load"]')
    expect(step).to_contain_text("6 / 6")  # appeared without a reload
    expect(step).to_contain_text("1 failed")
    expect(step.locator("rect.bar-failed")).to_have_count(1)
    assert page.evaluate("window.sitqSamePage") is True, "the page was reloaded"

    page.locator(f'#runs a[href="/workflows/{run_id}"]').click()
    expect(page.locator("#run-status")).to_have_text("partial")
    expect(page.locator('#steps [data-step="load"] .step-count')).to_have_text("6 / 6")
    expect(page.locator("#failed-item-list")).to_contain_text("ValueError: item 4 is bad")
    expect(page.locator("#failed-item-list tbody tr")).to_have_count(1)
    page.screenshot(path=str(screenshots / "workflow-run.png"), full_page=True)

    page.goto(url + "/")
    questions: list[str] = []

    def answer(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.on("dialog", answer)
    mail = page.locator('tr[data-queue="mail"]')
    mail.get_by_role("button", name="Pause").click()
    expect(page.locator("#notice")).to_contain_text("Paused")
    expect(mail).to_have_class("queue-paused")
    expect(mail.locator(".state-paused")).to_have_text("paused")
    expect(mail.get_by_role("button", name="Resume")).to_have_count(1)
    assert questions and questions[0].startswith("Pause queue mail?")
    assert with_queue(db_path, lambda q: q.paused()) == ["mail"]


def test_the_running_tasks_view_shows_their_progress_live(
    page: Any,
    db_path: Path,
    tmp_path: Path,
    serve: Callable[[], str],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """/tasks?status=running draws each running task's reported progress (the bar,
    done/total, its message) and follows it without a reload; a task that ends
    leaves the view."""
    from playwright.sync_api import expect

    gates = tmp_path / "gates"
    gates.mkdir()
    task_id = sync_queue(db_path, lambda q: q.enqueue(progress_jobs.in_parts, 3, str(gates)))
    start_worker()
    url = serve()
    page.goto(url + "/tasks?status=running")
    progress = page.locator(f'tr[data-task="{task_id}"] .task-progress')
    expect(progress).to_contain_text("1/3 (33%)")
    expect(progress).to_contain_text("part 1 of 3")
    expect(progress.locator('svg[aria-label="33% done"] rect.bar-running')).to_have_count(1)
    width = float(progress.locator("rect.bar-running").get_attribute("width") or "0")
    assert 26 < width < 27, width  # a third of the 80-pixel bar
    page.evaluate("window.sitqSamePage = true")
    try:
        (gates / "1").touch()
        expect(progress).to_contain_text("2/3 (67%)")
        expect(progress).to_contain_text("part 2 of 3")
        (gates / "2").touch()
        expect(progress).to_contain_text("3/3 (100%)")
        (gates / "3").touch()
        expect(page.locator("#task-list")).to_contain_text("No tasks match.")
        assert page.evaluate("window.sitqSamePage") is True, "the page was reloaded"
    finally:
        for name in ("1", "2", "3"):
            (gates / name).touch()


#: A workflow file's full path, as a run without ``name:`` records it.
LONG_SOURCE = (
    "/srv/deployments/acme-data-platform/releases/2025-06-01T12-00-00Z/pipelines/nightly/"
    "ingestion/workflows/import_customer_orders_from_partner_sftp_and_reconcile_ledgers.yaml"
)


def test_a_run_without_a_name_fits_a_1400_pixel_window(
    browser: Any, db_path: Path, serve: Callable[[], str]
) -> None:
    """The runs table shows a nameless run by its file, cut to fit: nothing overflows."""
    from playwright.sync_api import expect

    from sitq.workflow.store import NewWorkflowRun, WorkflowStore

    async def record(queue: TaskQueue) -> None:
        blob = queue.serializer.dumps({})
        run = NewWorkflowRun(
            "20250601-120000-abcdef", LONG_SOURCE, None, "steps: []", blob, "{}", "h", 1
        )
        assert await WorkflowStore.of(queue).create_workflow_run(run)
        items = queue.serializer.dumps(list(range(3)))
        await WorkflowStore.of(queue).begin_workflow_step(
            run.id, "load", 0, items, ["0", "1", "2"], True
        )

    with_queue(db_path, record)
    url = serve()
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        tab = context.new_page()
        tab.goto(url + "/")
        runs = tab.locator("#runs")
        expect(runs).to_contain_text("reconcile_ledgers.yaml")
        overflow = tab.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"the page is {overflow}px wider than the window"
        box = runs.bounding_box()
        assert box is not None and box["x"] + box["width"] <= 1400
        title = tab.locator("#runs .run-source").get_attribute("title")
        assert title == LONG_SOURCE  # the full path is a hover away
    finally:
        context.close()
