"""Real `sitq worker` processes, real signals: crash, drain and contention."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import jobs
import pytest
from support import SITQ, TESTS_DIR, WorkerProcess, await_until, subprocess_env, wait_until

from sitq import TaskQueue, TaskStatus


def parse_log(path: Path) -> tuple[Counter[str], dict[str, set[int]]]:
    """Start counts per marker, and the pids that started each marker."""
    starts: Counter[str] = Counter()
    pids: dict[str, set[int]] = {}
    for line in path.read_text().splitlines():
        kind, marker, pid = line.split()
        if kind == "S":
            starts[marker] += 1
            pids.setdefault(marker, set()).add(int(pid))
    return starts, pids


async def finished_count(queue: TaskQueue) -> int:
    totals = (await queue.stats())["totals"]
    return totals["succeeded"] + totals["failed"] + totals["cancelled"]


@pytest.mark.slow
async def test_sigkill_loses_nothing_and_reruns_only_in_flight_tasks(
    db_url: str, tmp_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    log = tmp_path / "runs.log"
    count = 2000
    async with TaskQueue(db_url) as queue:
        ids = await queue.enqueue_many(
            jobs.record, [(str(log), f"t{i}", 0.005) for i in range(count)]
        )
        workers = [spawn_worker("--concurrency", "4", "--lease", "2", db=db_url) for _ in range(3)]
        for worker in workers:
            worker.wait_started()

        async def some_done() -> bool:
            return await finished_count(queue) >= 300

        await await_until(some_done, 60, "300 tasks to finish")
        victim = workers[0]
        victim.send(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL

        async def all_done() -> bool:
            return await finished_count(queue) == count

        await await_until(all_done, 120, "every task to finish")
        results = await queue.get_results(ids)
    assert len(results) == count
    assert all(r.ok for r in results.values()), [r.error for r in results.values() if not r.ok]
    starts, pids = parse_log(log)
    assert set(starts) == {f"t{i}" for i in range(count)}
    reran = {marker for marker, n in starts.items() if n > 1}
    # Only tasks the killed worker had started can have run twice: its 4 running
    # ones, and those whose outcome was still waiting for its group commit.
    assert all(victim.pid in pids[marker] for marker in reran), reran
    assert len(reran) <= 16
    assert any(victim.pid in p for p in pids.values()), "the victim ran nothing before its kill"


@pytest.mark.slow
async def test_sigterm_lets_a_running_task_finish_and_exits_zero(
    db_url: str, spawn_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    async with TaskQueue(db_url) as queue:
        worker = spawn_worker("--grace", "10", db=db_url).wait_started()
        task_id = await queue.enqueue(jobs.record, str(log), "two-seconds", 2.0)

        async def running() -> bool:
            # RUNNING means its function started (a claim alone reads QUEUED).
            return await queue.status(task_id) is TaskStatus.RUNNING

        await await_until(running, 15, "the task to start")
        worker.send(signal.SIGTERM)
        assert worker.wait(20) == 0, worker.output()
        result = await queue.get_result(task_id, timeout=0)
        assert result is not None and result.ok and result.attempts == 1
        assert "draining" in worker.output()
        stats = await queue.stats()
        assert stats["workers_alive"] == 0


def sitq_cli(*args: str) -> str:
    """Run `sitq ARGS` as a user does; its output (it must succeed)."""
    done = subprocess.run(
        [SITQ, *args], capture_output=True, text=True, env=subprocess_env(), timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def test_a_prefetched_task_reads_queued_shows_as_claimed_and_sigterm_gives_it_back(
    db_url: str, spawn_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    started, release, log = tmp_path / "started", tmp_path / "release", tmp_path / "runs.log"
    async with TaskQueue(db_url) as queue:
        worker = spawn_worker("--grace", "20", "--prefetch", "1", db=db_url).wait_started()
        first = await queue.enqueue(jobs.wait_for_file, str(started), str(release), 30.0)
        second = await queue.enqueue(jobs.record, str(log), "second")

        async def first_runs_and_second_is_held() -> bool:
            held = (await queue._backend.get_tasks([second]))[second].worker_id is not None
            return started.exists() and held

        await await_until(first_runs_and_second_is_held, 15, "a run and a prefetched task")
        # The prefetched task has not started: it is not reported running.
        assert await queue.status(second) is TaskStatus.QUEUED

        async def first_reads_running() -> bool:
            return await queue.status(first) is TaskStatus.RUNNING

        await await_until(first_reads_running, 5, "the started task to read as running")
        report = json.loads(sitq_cli("status", "--json", "--db", db_url))
        row = report["queues"]["default"]
        assert (row["queued"], row["running"], row["claimed"]) == (1, 1, 1)
        assert (row["ready"], row["delayed"]) == (0, 0)  # held, neither waiting nor due
        [held_by] = [w for w in report["workers"] if w["state"] == "alive"]
        assert held_by["claimed"] == 1 and [t["id"] for t in held_by["running"]] == [first]
        assert "claimed by worker" in sitq_cli("inspect", second, "--db", db_url)
        worker.send(signal.SIGTERM)
        await await_until(lambda: _released(queue, second), 10, "the prefetched task back")
        release.touch()
        assert worker.wait(20) == 0, worker.output()
        result = await queue.get_result(first, timeout=0)
        assert result is not None and result.ok and result.attempts == 1
        record = (await queue._backend.get_tasks([second]))[second]
        assert (record.status, record.claimed, record.attempts) == ("queued", False, 0)
        assert not log.exists()  # it never ran


async def _released(queue: TaskQueue, task_id: str) -> bool:
    record = (await queue._backend.get_tasks([task_id]))[task_id]
    return record.worker_id is None and not record.claimed


async def test_started_at_is_when_the_function_started_not_when_it_was_claimed(
    db_url: str, spawn_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    log = tmp_path / "times.log"
    async with TaskQueue(db_url) as queue:
        spawn_worker("--concurrency", "1", "--prefetch", "1", db=db_url).wait_started()
        first = await queue.enqueue(jobs.record_times, str(log), "first", 0.5)
        second = await queue.enqueue(jobs.record_times, str(log), "second", 0.0)
        one = await queue.get_result(first, timeout=20)
        two = await queue.get_result(second, timeout=20)
    assert one is not None and one.ok and two is not None and two.ok
    times = {
        tuple(line.split()[:2]): float(line.split()[2]) for line in log.read_text().splitlines()
    }
    assert one.started_at is not None and two.started_at is not None
    # Each started_at is taken just before its function's first line ran...
    assert one.started_at.timestamp() <= times["S", "first"] < one.started_at.timestamp() + 1
    assert two.started_at.timestamp() <= times["S", "second"]
    # ...so the second, claimed while the first ran, started after the first ended.
    assert two.started_at.timestamp() >= times["D", "first"]


@pytest.mark.slow
async def test_sigterm_releases_a_task_longer_than_the_grace_period(
    db_url: str, spawn_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    async with TaskQueue(db_url) as queue:
        first = spawn_worker("--grace", "0.5", db=db_url).wait_started()
        task_id = await queue.enqueue(jobs.record, str(log), "long", 3.0)

        async def running() -> bool:
            return await queue.status(task_id) is TaskStatus.RUNNING

        await await_until(running, 15, "the task to start")
        started = time.monotonic()
        first.send(signal.SIGTERM)
        assert first.wait(20) == 0, first.output()
        assert time.monotonic() - started < 5
        assert await queue.status(task_id) is TaskStatus.QUEUED
        second = spawn_worker(db=db_url).wait_started()
        result = await queue.get_result(task_id, timeout=20)
        assert result is not None and result.ok
        assert result.attempts == 1  # the released run was not counted
        assert str(second.pid) in (result.worker_id or "")


@pytest.mark.slow
async def test_second_signal_stops_at_once_and_still_releases(
    db_url: str, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    async with TaskQueue(db_url) as queue:
        worker = spawn_worker("--grace", "60", db=db_url).wait_started()
        task_id = await queue.enqueue(jobs.async_sleep, 60)

        async def running() -> bool:
            return await queue.status(task_id) is TaskStatus.RUNNING

        await await_until(running, 15, "the task to start")
        worker.send(signal.SIGINT)
        wait_until(lambda: "draining" in worker.output(), 10, "the drain to begin")
        started = time.monotonic()
        worker.send(signal.SIGINT)
        assert worker.wait(20) == 0, worker.output()
        assert time.monotonic() - started < 5
        assert await queue.status(task_id) is TaskStatus.QUEUED


@pytest.mark.slow
async def test_contention_four_workers_two_producers_each_task_once(
    db_url: str, tmp_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    log = tmp_path / "runs.log"
    per_producer = 2500
    async with TaskQueue(db_url):
        pass  # create the database before the workers look for it
    workers = [spawn_worker("--concurrency", "4", db=db_url) for _ in range(4)]
    for worker in workers:
        worker.wait_started()
    producers = [
        subprocess.Popen(
            [
                sys.executable,
                str(TESTS_DIR / "producer_process.py"),
                db_url,
                prefix,
                str(per_producer),
                str(log),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=subprocess_env(),
        )
        for prefix in ("a", "b")
    ]
    outputs = []
    for producer in producers:
        out, _ = producer.communicate(timeout=180)
        outputs.append(out.decode())
        assert producer.returncode == 0, out.decode()
    async with TaskQueue(db_url) as queue:

        async def all_done() -> bool:
            return await finished_count(queue) == 2 * per_producer

        await await_until(all_done, 180, "every task to finish")
        totals = (await queue.stats())["totals"]
    assert totals["succeeded"] == 2 * per_producer
    starts, _ = parse_log(log)
    assert len(starts) == 2 * per_producer
    assert set(starts.values()) == {1}, "some task ran more than once"
    everything = "\n".join(outputs + [w.output() for w in workers])
    assert "locked" not in everything.lower()
    assert "Traceback" not in everything
    for worker in workers:
        worker.send(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(30) == 0
    await asyncio.sleep(0)


async def test_cancel_of_a_prefetched_task_ends_it_at_once_without_running(
    db_url: str, tmp_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """One slot, a long task A running and B prefetched behind it: cancelling B
    ends it cancelled without running, its worker woken at once rather than at
    its next heartbeat (10 s here), and B not left waiting for A's slot."""
    marker = tmp_path / "b-ran"
    async with TaskQueue(db_url) as queue:
        a = await queue.enqueue(jobs.sync_sleep, 30.0)
        b = await queue.enqueue(jobs.append_line, str(marker), "ran")
        worker = spawn_worker("--concurrency", "1", "--prefetch", "1", "--lease", "60", db=db_url)
        worker.wait_started()

        async def b_held_behind_a() -> bool:
            records = await queue._backend.get_tasks([a, b])
            return records[a].status == "running" and records[b].claimed

        await await_until(b_held_behind_a, 15, "A to run and B to be prefetched")
        asked = time.monotonic()
        assert await queue.cancel(b)
        result = await queue.get_result(b, timeout=10)
        waited = time.monotonic() - asked
        assert result is not None, "B did not end within 10 s of the cancel"
        assert result.status is TaskStatus.CANCELLED and result.started_at is None
        assert result.error == "cancelled before it started"
        assert waited < 5.0, f"B ended {waited:.1f} s after the cancel"  # heartbeat: 10 s
        assert await queue.status(a) is TaskStatus.RUNNING  # A left alone
    assert not marker.exists(), "B ran"


async def test_cli_cancel_of_a_claimed_task_names_its_holder(db_url: str) -> None:
    """A held, unstarted task reads queued: `sitq cancel` does not claim it was
    cancelled, nor that it runs; it names the worker and what will happen."""
    async with TaskQueue(db_url) as queue:
        task_id = await queue.enqueue(jobs.noop)
        [held] = await queue._backend.claim("w-holder", ["default"], 1, 60.0)
        assert held.id == task_id
        cancel = await asyncio.to_thread(
            subprocess.run,
            [SITQ, "cancel", "--db", db_url, task_id],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=30,
        )
        assert cancel.returncode == 0, cancel.stderr
        assert cancel.stdout.strip() == (
            f"task {task_id} is held by worker w-holder, not started: "
            "cancelled unless it starts first (then its worker stops it)"
        )
        record = (await queue._backend.get_tasks([task_id]))[task_id]
        assert (record.status, record.claimed) == ("queued", True)  # the row is its worker's


async def test_purge_of_queued_tasks_leaves_claimed_ones_and_says_so(db_url: str) -> None:
    """A claimed task reads queued, but its worker holds it: `sitq purge --status
    queued` and cancel_many leave it, and purge's help says so."""
    async with TaskQueue(db_url) as queue:
        [held_id, free_id, other_id] = await queue.enqueue_many(jobs.add, [(1, 2)] * 3)
        [held] = await queue._backend.claim("w-holder", ["default"], 1, 60.0)
        assert held.id == held_id
        assert await queue.cancel_many([held_id, other_id]) == [other_id]

        def sitq(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [SITQ, *args], capture_output=True, text=True, env=subprocess_env(), timeout=30
            )

        purge = await asyncio.to_thread(sitq, "purge", "--db", db_url, "--status", "queued")
        assert purge.returncode == 0, purge.stderr
        assert purge.stdout.startswith("deleted 1 task(s)")
        assert set(await queue._backend.get_tasks([held_id, free_id])) == {held_id}
        help_text = " ".join((await asyncio.to_thread(sitq, "purge", "--help")).stdout.split())
        assert "claimed but not started" in help_text
