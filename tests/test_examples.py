"""The examples run as written, as real processes, and leave nothing behind.

Each example runs by the command README.md gives for it (``readme_examples``),
with this environment's `python` and `sitq`, in a temporary working directory,
so a stray database would land there (and be caught) rather than in the repository.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from readme_examples import example_commands, readme_env, run_readme_example

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
WORKERS = ROOT / "workers"

#: Generous limits: these bound a hang, they are not expected durations.
EXAMPLE_TIMEOUT = 120.0
WORKER_START_TIMEOUT = 30.0
WORKER_STOP_TIMEOUT = 30.0


def _database_files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if re.search(r"\.db(-wal|-shm)?$", p.name)]


def _sitq(*args: str) -> list[str]:
    return [sys.executable, "-m", "sitq.cli", *args]


def test_batch_processing_example(tmp_path: Path) -> None:
    before = set(_database_files(EXAMPLES))
    proc = run_readme_example("examples/batch_processing.py", tmp_path)
    out = proc.stdout
    assert "=== Batch Processing Example ===" in out
    assert "Enqueued 20 validation tasks" in out
    assert "Validation complete: 12 valid users out of 20" in out
    assert "Processed 12 valid users" in out
    assert "'valid_users': 12, 'processed_users': 12" in out
    assert "Processed 15 batches; the first: {'count': 5, 'sum': 16.5, 'average': 3.3" in out
    assert "Enqueued 100 tasks" in out
    assert re.search(r"Progress right after: \d+/100 finished", out), out
    assert re.search(r"Collected 100 results in \d+\.\d+s", out), out
    assert "Progress now: 100/100 finished, 100 succeeded" in out
    # The measured report: 20 + 12 + 15 + 100 tasks in 4 batches, none failed.
    report = dict(re.findall(r"^\s*(\w+): (.+)$", out.split("4. Performance Summary:")[1], re.M))
    assert (report["batches"], report["tasks"], report["finished"]) == ("4", "147", "147")
    assert (report["failed"], report["error_rate"]) == ("0", "0.0 %")
    assert float(report["tasks_per_second"]) > 0
    assert 0 < float(report["mean_batch_time"].split()[0]) <= float(report["wall_time"].split()[0])
    # tqdm's bar for the named batch went to stderr.
    assert "large: 100%" in proc.stderr and "100/100" in proc.stderr
    assert out.rstrip().splitlines()[-1] == "Batch processing example completed!"
    # No mojibake left over from the tutorial's emoji.
    assert "\u00f0" not in out and "\u00e2" not in out
    # Its database was temporary: nothing left in its cwd, its temp dir or the repo.
    assert _database_files(tmp_path) == []
    assert set(_database_files(EXAMPLES)) == before


def test_quickstart_example(tmp_path: Path) -> None:
    proc = run_readme_example("examples/quickstart.py", tmp_path)
    out = proc.stdout
    assert "add(2, 3) -> 5 (succeeded)" in out
    assert "word_count(...) -> 4" in out
    # max_retries=2: the first run and two retries, then failed for good.
    assert "always_fails(7) -> failed after 3 attempts" in out
    assert "error: ValueError: cannot handle 7" in out
    assert "unwrap() raised TaskFailed: ValueError: cannot handle 7" in out
    assert out.rstrip().splitlines()[-1] == "Quickstart completed!"
    assert _database_files(tmp_path) == []


def test_compositions_example(tmp_path: Path) -> None:
    proc = run_readme_example("examples/compositions.py", tmp_path)
    out = proc.stdout
    assert "chain  fetch(1) | count        -> 3" in out
    assert "group  double(0..4)            -> [0, 2, 4, 6, 8]" in out
    assert "chord  total(double(0..9))     -> 90" in out
    assert "nested fetch | [count, total] | total -> 24" in out
    assert "depends_on: b waits for a      -> 2" in out
    assert "cancelled - ParentFailed: parent task" in out and "(__main__.flaky) ended failed" in out
    assert _database_files(tmp_path) == []


def test_progress_example(tmp_path: Path) -> None:
    proc = run_readme_example("examples/progress.py", tmp_path)
    lines = proc.stdout.splitlines()
    assert lines[0] == "Resizing 20 photos in the background:"
    bars = [
        (i, re.fullmatch(r"  \[([#.]{20})\] (\d+)/20  resized photo-(\d\d)\.jpg", line))
        for i, line in enumerate(lines)
    ]
    seen = [(i, m.group(1), int(m.group(2)), int(m.group(3))) for i, m in bars if m]
    dones = [done for _, _, done, _ in seen]
    assert dones and dones == sorted(set(dones)), lines  # each report once, never back
    assert dones[-1] == 20
    assert dones[0] < 20, "no progress seen before the task finished"
    for _, drawn, done, photo in seen:  # the bar and the message match the count
        assert drawn == "#" * done + "." * (20 - done) and photo == done
    finished = lines.index("  finished: succeeded, 20 photos resized")
    assert finished == seen[-1][0] + 1
    assert lines[finished + 1] == "Stored with the task: 20/20 (resized photo-20.jpg)"
    # The crawl: progress with no total, a cancel once 5 pages are done, its end.
    crawl = lines[finished + 2 :]
    assert crawl[0] == "Crawling until 5 pages are done, then cancelling:"
    asked = crawl.index("  cancel: requested (its worker tells the task)")
    pages = [
        re.fullmatch(r"  (\d+) pages crawled, the last example\.org/page/(\d+)", x) for x in crawl
    ]
    before = [int(m.group(1)) for m in pages[:asked] if m]
    assert before and before[-1] >= 5 > max([0, *before[:-1]]), crawl
    assert crawl[-2:] == ["  finished: cancelled", "Progress example completed!"]
    assert _database_files(tmp_path) == []


def _wait_for_worker(db: Path, env: dict[str, str], worker: subprocess.Popen[bytes]) -> None:
    """Poll ``sitq status --json`` until the worker has registered (or died)."""
    deadline = time.monotonic() + WORKER_START_TIMEOUT
    while time.monotonic() < deadline:
        assert worker.poll() is None, f"worker exited early with {worker.returncode}"
        status = subprocess.run(
            _sitq("status", "--json", "--db", str(db)),
            env=env,
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT,
        )
        assert status.returncode == 0, status.stderr
        if any(w["state"] == "alive" for w in json.loads(status.stdout)["workers"]):
            return
        time.sleep(0.05)  # polling interval, not synchronization
    pytest.fail(f"worker did not register within {WORKER_START_TIMEOUT}s")


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def _shell(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT,
    )


def test_worker_daemon_example(tmp_path: Path) -> None:
    """The README's commands for examples/worker_daemon, as written, in a copy of
    the folder (its `cd`), with $SITQ_DB pointing elsewhere (the folder's README
    says both sides use it)."""
    init, start_worker, produce, stop = example_commands()["examples/worker_daemon"]
    assert start_worker.endswith("&") and stop == "kill %1", "a worker in the background, stopped"
    app = tmp_path / "app"
    shutil.copytree(EXAMPLES / "worker_daemon", app, ignore=shutil.ignore_patterns("__pycache__"))
    db = tmp_path / "data" / "queue.db"
    db.parent.mkdir()
    env = readme_env(tmp_path, SITQ_DB=str(db))

    created = _shell(init, app, env)
    assert created.returncode == 0, created.stderr
    assert db.exists()
    assert db.stat().st_mode & 0o077 == 0, "the database must be owner-only"

    log_path = tmp_path / "worker.log"
    worker: subprocess.Popen[bytes] | None = None
    try:
        with open(log_path, "wb") as log:
            worker = subprocess.Popen(
                ["/bin/sh", "-c", "exec " + start_worker.removesuffix("&").strip()],
                cwd=app,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _wait_for_worker(db, env, worker)

        began = time.monotonic()
        producer = _shell(produce, app, env)
        assert producer.returncode == 0, f"{producer.stdout}\n{producer.stderr}"
        assert "enqueued 20 tasks" in producer.stdout
        assert "squares: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in producer.stdout
        took = time.monotonic() - began
        # The summary gives the time it really took, not the 60 s it would wait.
        summary = re.search(
            r"summary: 20 succeeded, 0 failed, 0 unfinished, in ([\d.]+)s", producer.stdout
        )
        assert summary, producer.stdout
        assert float(summary.group(1)) <= took + 0.05
        assert "all tasks succeeded" in producer.stdout

        # `kill %1`: SIGTERM drains and exits 0.
        worker.send_signal(signal.SIGTERM)
        code = _wait_exit(worker, WORKER_STOP_TIMEOUT)
        log_text = log_path.read_text(errors="replace")
        assert code is not None, f"worker still running {WORKER_STOP_TIMEOUT}s after SIGTERM"
        assert code == 0, f"worker exited {code}\n{log_text}"
        assert "SIGTERM received, draining" in log_text, log_text
        assert (
            "stopped after 20 runs (20 succeeded, 0 failed, 0 cancelled, 0 retried)" in log_text
        ), log_text

        status = subprocess.run(
            _sitq("status", "--json"),
            cwd=app,
            env=env,
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT,
        )
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["queues"]["default"]["succeeded"] == 20
        assert [w["state"] for w in report["workers"]] == ["stopped"]
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(timeout=WORKER_STOP_TIMEOUT)
    # Everything went to $SITQ_DB: nothing written next to the code.
    assert _database_files(app) == []


def _unit_variables(text: str) -> set[str]:
    exec_start = re.search(r"^ExecStart=(.*?)(?<!\\)$", text, re.M | re.S)
    assert exec_start, "no ExecStart"
    return set(re.findall(r"\$\{?([A-Z_]+)\}?", exec_start.group(1)))


def test_worker_unit_matches_its_env_file() -> None:
    unit = (WORKERS / "sitq-worker@.service").read_text()
    used = _unit_variables(unit)
    assert {"SITQ_DB", "SITQ_CONCURRENCY", "SITQ_IMPORTS"} <= used
    exec_start = " ".join(unit.split("ExecStart=", 1)[1].split("\n\n", 1)[0].split())
    for expected in (
        "sitq worker",
        "--db ${SITQ_DB}",
        "--queue %i",
        "--concurrency ${SITQ_CONCURRENCY}",
        "--import ${SITQ_IMPORTS}",
    ):
        assert expected in exec_start, expected
    settings = dict(re.findall(r"^(\w+)=(.*)$", unit, re.M))
    assert settings["KillSignal"] == "SIGTERM"
    assert settings["KillMode"] == "mixed"
    assert settings["Restart"] == "on-failure"
    assert settings["UMask"] == "0077"
    assert settings["NoNewPrivileges"] == "yes"
    assert settings["ProtectSystem"] == "strict"
    assert settings["User"] not in ("", "root")
    env_file = dict(re.findall(r"^(\w+)=(.*)$", (WORKERS / "sitq-worker.env").read_text(), re.M))
    defaults = dict(re.findall(r"^Environment=(\w+)=(.*)$", unit, re.M))
    assert used <= set(env_file), f"undocumented: {used - set(env_file)}"
    assert used <= set(defaults), f"no default in the unit: {used - set(defaults)}"
    for name in used:
        assert env_file[name] == defaults[name], name
    # The stop timeout leaves room for the grace period plus releasing tasks.
    assert float(settings["TimeoutStopSec"]) >= float(env_file["SITQ_GRACE"]) + 10
    db_dir = str(Path(env_file["SITQ_DB"]).parent)
    assert db_dir in settings["ReadWritePaths"].split()


def test_worker_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    system_units = Path("/lib/systemd/system")
    if analyze is None or not (system_units / "sysinit.target").exists():
        pytest.skip("systemd-analyze (with systemd's own units) is not available")
    # An image root holding the unit, systemd's units and a stand-in for the venv's
    # sitq, so verify checks the unit itself and not this machine's installation.
    root = tmp_path / "root"
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    shutil.copy(WORKERS / "sitq-worker@.service", unit_dir)
    unit = (WORKERS / "sitq-worker@.service").read_text()
    executable = re.search(r"^ExecStart=(\S+)", unit, re.M).group(1)  # type: ignore[union-attr]
    stand_in = root / executable.lstrip("/")
    stand_in.parent.mkdir(parents=True)
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    proc = subprocess.run(
        [analyze, "verify", f"--root={root}", "sitq-worker@emails.service"],
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "sitq-worker@" not in output, output


def test_scheduled_tasks_example(tmp_path: Path) -> None:
    proc = run_readme_example("examples/scheduled_tasks.py", tmp_path)
    out = proc.stdout
    assert "unique key: same task True, second one created: False" in out
    assert "report for monday sent" in out
    assert "render: 5 pages, at most 1 at once" in out
    ticks = int(out.split("heartbeat ran ")[1].split()[0])
    assert ticks >= 3
    assert "schedule 'heartbeat': every 0.5s" in out
    assert out.rstrip().splitlines()[-1] == "Scheduled tasks example completed!"
    assert _database_files(tmp_path) == []


# -- examples/workflows: every command of its README, as written -----------------------------

WORKFLOWS = EXAMPLES / "workflows"
#: Bounds the wait for a background command's first line (a server, a worker).
BACKGROUND_START_TIMEOUT = 30.0


def _readme_sections() -> dict[str, tuple[list[str], list[str]]]:
    """Each `## ` section of examples/workflows/README.md holding commands: its
    ```sh lines and the ```text lines its output must contain."""
    text = (WORKFLOWS / "README.md").read_text()
    sections = {}
    for chunk in re.split(r"^## ", text, flags=re.M)[1:]:
        title = chunk.splitlines()[0].strip()
        blocks = re.findall(r"^```(sh|text)\n(.*?)^```", chunk, re.M | re.S)
        commands = [line for kind, body in blocks if kind == "sh" for line in body.splitlines()]
        expected = [line for kind, body in blocks if kind == "text" for line in body.splitlines()]
        if commands:
            sections[title] = ([c for c in commands if c.strip()], [e for e in expected if e])
    return sections


def test_every_workflow_example_is_in_its_readme() -> None:
    titles = " ".join(_readme_sections())
    shipped = sorted(p.name for p in WORKFLOWS.glob("*.yaml"))
    assert shipped and [name for name in shipped if name not in titles] == []


def test_the_readmes_workflow_commands_are_ones_its_test_runs() -> None:
    """README.md's `cd examples/workflows` block gives commands that the folder's
    README gives too, so test_workflow_example_runs_as_its_readme_shows runs them
    (in a copy of the folder, as after that `cd`)."""
    commands = example_commands()["examples/workflows"]
    tested = {
        command.partition("  #")[0].strip()
        for lines, _ in _readme_sections().values()
        for command in lines
    }
    assert commands and [c for c in commands if c not in tested] == []


def test_the_demo_api_keeps_off_the_dashboards_port() -> None:
    """Both run at once in a tour of the examples: the demo may not take 8765."""
    from sitq.dashboard.cli import dashboard

    [port] = [p.default for p in dashboard.params if p.name == "port"]
    shown = (WORKFLOWS / "README.md").read_text() + (WORKFLOWS / "demo_api.py").read_text()
    assert f"127.0.0.1:{port}" not in shown and f"else {port}" not in shown
    assert "127.0.0.1:8780" in shown


def _start_background(command: str, cwd: Path, env: dict[str, str], log: Path) -> Any:
    """Start ``command &`` as the shell would, and wait for its first line of output."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", "exec " + command], cwd=cwd, env=env, stdout=out, stderr=out
        )
    deadline = time.monotonic() + BACKGROUND_START_TIMEOUT
    while not log.read_text(errors="replace").strip():
        assert proc.poll() is None, f"`{command}` exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"`{command}` printed nothing"
        time.sleep(0.02)  # polling interval, not synchronization
    assert proc.poll() is None, f"`{command}` exited:\n{log.read_text(errors='replace')}"
    return proc


@pytest.mark.parametrize("section", sorted(_readme_sections()))
def test_workflow_example_runs_as_its_readme_shows(section: str, tmp_path: Path) -> None:
    commands, expected = _readme_sections()[section]
    work = tmp_path / "workflows"
    shutil.copytree(WORKFLOWS, work, ignore=shutil.ignore_patterns("__pycache__"))
    # `sitq` and `python` are this environment's, as after `pip install`.
    env = readme_env(tmp_path)
    background: list[subprocess.Popen[bytes]] = []
    output = ""
    try:
        for line in commands:
            command, _, comment = line.partition("  #")
            command = command.strip()
            if command.endswith("&"):
                log = tmp_path / f"background-{len(background)}.log"
                background.append(_start_background(command[:-1].strip(), work, env, log))
                continue
            exits = re.search(r"exits (\d+)", comment)
            proc = subprocess.run(
                ["/bin/sh", "-c", command],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=EXAMPLE_TIMEOUT,
            )
            output += proc.stdout + proc.stderr
            want = int(exits.group(1)) if exits else 0
            assert proc.returncode == want, f"`{command}`: exit {proc.returncode}\n{output}"
            assert "Traceback" not in proc.stderr, proc.stderr
    finally:
        for proc in background:
            proc.send_signal(signal.SIGTERM)
            if _wait_exit(proc, WORKER_STOP_TIMEOUT) is None:
                proc.kill()
                proc.wait(WORKER_STOP_TIMEOUT)
    for line in expected:
        assert line in output, f"README says the output holds {line!r}; it was:\n{output}"
    # A run never warns about an example: they quote what they give the shell.
    assert "warning:" not in output
