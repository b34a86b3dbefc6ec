"""`sitq worker --processes N`: a supervisor and its N `sitq worker` children, started
as users start them, with real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import jobs
import psutil
import pytest
from support import SITQ, WorkerProcess, await_until, subprocess_env, wait_until

from sitq import Result, SyncTaskQueue, TaskQueue, TaskStatus

STARTED = re.compile(r"worker (\S+/(\d+)) started: ")


def children(supervisor: WorkerProcess) -> list[psutil.Process]:
    """The supervisor's live child processes."""
    return [
        p
        for p in psutil.Process(supervisor.pid).children()
        if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]


def started_workers(supervisor: WorkerProcess) -> dict[int, str]:
    """Worker id by pid, of every child that logged its start (restarts too)."""
    return {int(m.group(2)): m.group(1) for m in STARTED.finditer(supervisor.output())}


def wait_children_started(supervisor: WorkerProcess, n: int, timeout: float = 30.0) -> list[int]:
    """Wait until ``n`` children are serving; their pids."""
    wait_until(
        lambda: len(started_workers(supervisor)) >= n or supervisor.process.poll() is not None,
        timeout,
        f"{n} worker processes to start",
    )
    assert supervisor.process.poll() is None, supervisor.output()
    return sorted(started_workers(supervisor))


def all_results(queue: SyncTaskQueue, ids: list[str], timeout: float) -> dict[str, Result]:
    """The results of ``ids`` once every one has finished."""
    wait_until(lambda: len(queue.get_results(ids)) == len(ids), timeout, "every task to finish")
    return queue.get_results(ids)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def sitq(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SITQ, *args], capture_output=True, text=True, env=subprocess_env(**env), timeout=60
    )


@pytest.fixture
def database(db_path: Path) -> Path:
    # `sitq worker` serves only an existing database.
    assert sitq("init", "--db", str(db_path)).returncode == 0
    return db_path


def test_two_processes_drain_a_queue_and_each_runs_tasks(
    database: Path, tmp_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    log = tmp_path / "runs.log"
    supervisor = spawn_worker("--processes", "2", "--concurrency", "2", "--import", "jobs")
    pids = wait_children_started(supervisor, 2)
    assert sorted(p.pid for p in children(supervisor)) == pids
    with SyncTaskQueue(database) as queue:
        ids = queue.enqueue_many(jobs.record, [(str(log), f"t{i}", 0.02) for i in range(100)])
        results = all_results(queue, ids, 60)
    assert len(results) == 100 and all(r.ok for r in results.values())
    ran_in = {int(line.split()[2]) for line in log.read_text().splitlines()}
    assert ran_in == set(pids), "both children ran tasks, and nothing else did"
    # Each child has its own database connection, event loop and worker id.
    assert {r.worker_id for r in results.values()} == set(started_workers(supervisor).values())
    supervisor.send(signal.SIGTERM)
    assert supervisor.wait(30) == 0, supervisor.output()
    assert all(gone(pid) for pid in pids)


def test_the_database_reaches_children_through_the_environment(
    database: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    supervisor = spawn_worker("-p", "2")
    wait_children_started(supervisor, 2)
    for child in children(supervisor):
        command = child.cmdline()
        assert "worker" in command and "--db" not in command and str(database) not in command
        assert child.environ()["SITQ_DB"] == str(database)


def test_a_killed_child_is_restarted_and_the_work_finishes(
    database: Path, tmp_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    log = tmp_path / "runs.log"
    supervisor = spawn_worker(
        "--processes", "2", "--concurrency", "2", "--lease", "2", "--import", "jobs"
    )
    first = wait_children_started(supervisor, 2)
    with SyncTaskQueue(database) as queue:
        ids = queue.enqueue_many(jobs.record, [(str(log), f"t{i}", 0.1) for i in range(80)])
        victim = first[0]

        def victim_ran_some() -> bool:
            return log.exists() and f" {victim}\n" in log.read_text()

        wait_until(victim_ran_some, 30, "the victim to run tasks")
        psutil.Process(victim).send_signal(signal.SIGKILL)
        wait_until(lambda: len(started_workers(supervisor)) == 3, 30, "a replacement child")
        results = all_results(queue, ids, 90)
    assert len(results) == 80 and all(r.ok for r in results.values())
    assert f"worker process {victim} was killed by SIGKILL" in supervisor.output()
    live = sorted(p.pid for p in children(supervisor))
    assert len(live) == 2 and victim not in live and first[1] in live
    assert supervisor.process.poll() is None
    supervisor.send(signal.SIGTERM)
    assert supervisor.wait(30) == 0, supervisor.output()


def test_sigterm_drains_every_child_then_exits_zero(
    database: Path, tmp_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    release = tmp_path / "release"
    supervisor = spawn_worker(
        "--processes", "2", "--prefetch", "0", "--grace", "60", "--import", "jobs"
    )
    pids = wait_children_started(supervisor, 2)
    with SyncTaskQueue(database) as queue:
        ids = [
            queue.enqueue(jobs.wait_for_file, str(tmp_path / f"started-{i}"), str(release), 60)
            for i in range(2)
        ]
        wait_until(
            lambda: all((tmp_path / f"started-{i}").exists() for i in range(2)),
            30,
            "both tasks to start",
        )
        supervisor.send(signal.SIGTERM)
        wait_until(
            lambda: supervisor.output().count("SIGTERM received, draining") == 3,
            30,
            "the supervisor and both children to begin draining",
        )
        # Draining waits for what runs: nobody has exited yet.
        assert supervisor.process.poll() is None
        assert not any(gone(pid) for pid in pids)
        release.touch()
        assert supervisor.wait(30) == 0, supervisor.output()
        results = queue.get_results(ids)
        stats = queue.stats()
    assert all(r.ok and r.value == "released" and r.attempts == 1 for r in results.values())
    # One task in each child (--prefetch 0: a child holds only what it runs).
    assert {r.worker_id for r in results.values()} == set(started_workers(supervisor).values())
    assert stats["workers_alive"] == 0
    assert all(gone(pid) for pid in pids)


def test_a_second_signal_stops_every_child_at_once_releasing_its_task(
    database: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    supervisor = spawn_worker("-p", "2", "--prefetch", "0", "--grace", "60", "--import", "jobs")
    pids = wait_children_started(supervisor, 2)
    with SyncTaskQueue(database) as queue:
        ids = [queue.enqueue(jobs.async_sleep, 60) for _ in range(2)]
        wait_until(
            lambda: all(queue.status(i) is TaskStatus.RUNNING for i in ids), 30, "both to run"
        )
        supervisor.send(signal.SIGINT)
        wait_until(
            lambda: supervisor.output().count("received, draining") == 3,
            30,
            "the supervisor and both children to begin draining",
        )
        supervisor.send(signal.SIGINT)
        assert supervisor.wait(20) == 0, supervisor.output()
        # Stopped at once, not after the tasks' 60 s: given back, attempt not counted.
        assert all(queue.status(i) is TaskStatus.QUEUED for i in ids)
    assert "SIGINT received again, stopping the workers at once" in supervisor.output()
    assert supervisor.output().count("SIGTERM received again, stopping at once") == 2
    assert all(gone(pid) for pid in pids)


def test_ctrl_c_at_a_terminal_reaches_each_child_once(
    database: Path, tmp_path: Path, sigkill_on_teardown: list[subprocess.Popen[bytes]]
) -> None:
    """A terminal's Ctrl-C sends SIGINT to the whole foreground process group: the
    children, in a session of their own, get only the supervisor's one SIGTERM
    (two signals would stop them at once), so a running task still finishes."""
    release = tmp_path / "release"
    log_path = tmp_path / "supervisor.log"
    with log_path.open("wb") as log:
        supervisor = subprocess.Popen(
            [SITQ, "worker", "--db", str(database), "-p", "2", "--grace", "60", "-i", "jobs"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=subprocess_env(),
            cwd=tmp_path,
            start_new_session=True,  # a process group of its own, as a shell's job
        )
    sigkill_on_teardown.append(supervisor)

    def output() -> str:
        return log_path.read_text()

    wait_until(lambda: len(STARTED.findall(output())) == 2, 30, "both children to start")
    with SyncTaskQueue(database) as queue:
        task_id = queue.enqueue(jobs.wait_for_file, str(tmp_path / "started"), str(release), 60)
        wait_until((tmp_path / "started").exists, 30, "the task to start")
        os.killpg(supervisor.pid, signal.SIGINT)  # what Ctrl-C does
        wait_until(
            lambda: output().count("SIGTERM received, draining") == 2,
            30,
            "both children to begin draining",
        )
        release.touch()
        assert supervisor.wait(30) == 0, output()
        result = queue.get_result(task_id, timeout=0)
    assert result is not None and result.ok and result.attempts == 1, output()
    assert "SIGINT received, draining 2 worker processes" in output()
    assert "received again" not in output()


def test_children_drain_and_exit_when_the_supervisor_is_killed(
    database: Path, tmp_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    release = tmp_path / "release"
    supervisor = spawn_worker("--processes", "2", "--grace", "60", "--import", "jobs")
    pids = wait_children_started(supervisor, 2)
    with SyncTaskQueue(database) as queue:
        task_id = queue.enqueue(jobs.wait_for_file, str(tmp_path / "started"), str(release), 60)
        wait_until((tmp_path / "started").exists, 30, "the task to start")
        supervisor.send(signal.SIGKILL)
        assert supervisor.wait(10) == -signal.SIGKILL
        # The kernel tells each child (PR_SET_PDEATHSIG: SIGTERM), and each drains.
        wait_until(
            lambda: supervisor.output().count("SIGTERM received, draining") == 2,
            30,
            "both children to begin draining",
        )
        release.touch()
        wait_until(lambda: all(gone(pid) for pid in pids), 30, "the children to exit")
        result = queue.get_result(task_id, timeout=0)
        assert result is not None and result.ok and result.attempts == 1
        assert queue.stats()["workers_alive"] == 0


async def test_status_lists_the_children_under_their_supervisor(
    database: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    supervisor = spawn_worker("--processes", "2", "--concurrency", "3")
    alone = spawn_worker("--concurrency", "1").wait_started()
    pids = wait_children_started(supervisor, 2)
    ids = started_workers(supervisor)
    (supervisor_id,) = {worker_id.rsplit("/", 1)[0] for worker_id in ids.values()}
    assert supervisor_id.split("-")[-2] == str(supervisor.pid)

    async with TaskQueue(database) as queue:

        async def three_alive() -> bool:
            return (await queue.stats())["workers_alive"] == 3

        await await_until(three_alive, 15, "three live workers")

    report = json.loads(sitq("status", "--db", str(database), "--json").stdout)
    by_pid = {w["pid"]: w for w in report["workers"]}
    assert {pid: by_pid[pid]["supervisor"] for pid in pids} == dict.fromkeys(pids, supervisor_id)
    assert by_pid[alone.pid]["supervisor"] is None
    assert "/" not in by_pid[alone.pid]["id"]  # --processes 1: a worker as before

    text = sitq("status", "--db", str(database)).stdout.splitlines()
    header = text.index(f"  supervisor {supervisor_id}: 2 worker processes (2 alive)")
    members = text[header + 1 : header + 3]
    assert sorted(int(line.split(" pid ")[1].split()[0]) for line in members) == pids
    assert all(line.startswith(f"    {supervisor_id}/") for line in members)
    (own_line,) = [line for line in text if f" pid {alone.pid} " in line]
    assert own_line.startswith(f"  {by_pid[alone.pid]['id']} ")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "Invalid value for '--processes' / '-p': 0 processes would run no worker: give 1 "),
        ("-3", "Invalid value for '--processes' / '-p': -3 processes would run no worker"),
        ("two", "Invalid value for '--processes' / '-p': 'two' is not a whole number: how many "),
        ("1.5", "Invalid value for '--processes' / '-p': '1.5' is not a whole number"),
    ],
)
def test_bad_process_counts_are_refused(database: Path, value: str, message: str) -> None:
    run = sitq("worker", "--db", str(database), "--processes", value)
    assert run.returncode == 2 and message in run.stderr, run.stderr


def test_the_supervisor_checks_the_database_before_starting_children(tmp_path: Path) -> None:
    run = sitq("worker", "--db", str(tmp_path / "missing.db"), "-p", "2")
    assert run.returncode == 1 and "no sitq database at" in run.stderr, run.stderr
    assert "starting 2 worker processes" not in run.stderr


def test_children_that_keep_dying_at_once_make_it_give_up(database: Path) -> None:
    run = sitq("worker", "--db", str(database), "-p", "2", "--import", "no_such_module_here")
    assert run.returncode == 1, run.stderr
    assert run.stderr.count("cannot import module 'no_such_module_here'") >= 5
    assert "died within 10 s of starting 5 times in a row" in run.stderr
    assert "giving up" in run.stderr


def test_burst_exits_once_every_child_has_exited(database: Path, tmp_path: Path) -> None:
    with SyncTaskQueue(database) as queue:
        ids = queue.enqueue_many(jobs.add, [(i, i) for i in range(300)])
    run = sitq("worker", "-p", "2", "--burst", "--import", "jobs", SITQ_DB=str(database))
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("burst done:") == 2
    assert "every worker process exited cleanly" in run.stderr
    with SyncTaskQueue(database) as queue:
        results = queue.get_results(ids)
        assert len(results) == 300 and all(r.ok for r in results.values())
        queue.enqueue(jobs.fail, "on purpose")
    run = sitq("worker", "-p", "2", "--burst", "--import", "jobs", SITQ_DB=str(database))
    assert run.returncode == 1, run.stderr
    assert "1 of 2 worker processes exited with an error" in run.stderr
    assert "with --burst, status 1: some of their tasks failed" in run.stderr


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # SQLite: the tests above
async def test_postgres_drain_with_two_processes(
    db_url: str, tmp_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    log = tmp_path / "runs.log"
    async with TaskQueue(db_url) as queue:
        supervisor = spawn_worker("-p", "2", "-c", "2", "--import", "jobs", db=db_url)
        pids = wait_children_started(supervisor, 2)
        for child in children(supervisor):
            assert db_url not in " ".join(child.cmdline())
        ids = await queue.enqueue_many(jobs.record, [(str(log), f"t{i}", 0.02) for i in range(100)])

        async def all_finished() -> bool:
            return len(await queue.get_results(ids)) == len(ids)

        await await_until(all_finished, 60, "every task to finish")
        results = await queue.get_results(ids)
    assert len(results) == 100 and all(r.ok for r in results.values())
    assert {int(line.split()[2]) for line in log.read_text().splitlines()} == set(pids)
    supervisor.send(signal.SIGTERM)
    assert supervisor.wait(30) == 0, supervisor.output()
