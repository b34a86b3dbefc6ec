"""The service definitions in workers/ run commands that exist: each sitq command
line they name, with the deployment's paths swapped for a test database, passes
`sitq worker --check` for real."""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
from pathlib import Path

import jobs
import pytest
from support import SITQ, subprocess_env

from sitq import SyncTaskQueue

WORKERS = Path(__file__).resolve().parent.parent / "workers"
VENV_SITQ = "/opt/sitq/venv/bin/sitq"
DEPLOYED_DB = "/var/lib/sitq/sitq.db"


def _systemd_commands() -> list[str]:
    unit = (WORKERS / "sitq-worker@.service").read_text()
    joined = unit.replace("\\\n", " ")
    return re.findall(r"^(?:ExecStartPre|ExecStart)=(.*)$", joined, re.M)


def _supervisord_commands() -> list[str]:
    config = configparser.RawConfigParser()
    config.read(WORKERS / "supervisord.conf")
    return [config[s]["command"] for s in config.sections() if s.startswith("program:")]


def _procfile_commands() -> list[str]:
    lines = (WORKERS / "Procfile").read_text().splitlines()
    return [line.split(":", 1)[1] for line in lines if line and not line.startswith("#")]


COMMANDS = {
    "systemd": _systemd_commands,
    "supervisord": _supervisord_commands,
    "Procfile": _procfile_commands,
}


def _as_test_command(command: str, db: Path) -> list[str]:
    """The deployed command line, pointed at ``db`` and the tests' task module."""
    values = {
        "${SITQ_DB}": str(db),
        "${SITQ_CONCURRENCY}": "2",
        "${SITQ_PROCESSES}": "2",
        "${SITQ_IMPORTS}": "jobs",
        "${SITQ_GRACE}": "30",
        "$SITQ_WORKER_ARGS": "",
        "%i": "default",
        DEPLOYED_DB: str(db),
    }
    for name, value in values.items():
        command = command.replace(name, value)
    args = shlex.split(command)
    assert args[0] in (VENV_SITQ, "sitq"), command
    args[0] = SITQ
    args = ["jobs" if a == "tasks" and args[i - 1] == "--import" else a for i, a in enumerate(args)]
    assert not any("$" in a for a in args), f"unexpanded variable in {command!r}"
    return args if "--check" in args else [*args, "--check"]


@pytest.mark.parametrize("manager", sorted(COMMANDS))
def test_service_commands_pass_the_worker_check(manager: str, db_path: Path) -> None:
    commands = COMMANDS[manager]()
    assert commands, f"no sitq command found in the {manager} definition"
    with SyncTaskQueue(db_path) as queue:
        queue.enqueue(jobs.noop)
    for command in commands:
        args = _as_test_command(command, db_path)
        assert args[1] == "worker", command
        proc = subprocess.run(
            args, capture_output=True, text=True, env=subprocess_env(SITQ_DB=str(db_path))
        )
        assert proc.returncode == 0, f"{command}\n{proc.stderr}"
        assert proc.stdout.startswith("ok: "), proc.stdout


def test_systemd_unit_checks_before_it_starts() -> None:
    pre, start = _systemd_commands()
    assert pre.rstrip().endswith("--check") and "--check" not in start


def test_systemd_unit_runs_the_configured_processes_and_signals_only_the_supervisor() -> None:
    unit = (WORKERS / "sitq-worker@.service").read_text()
    _, start = _systemd_commands()
    assert "--processes ${SITQ_PROCESSES}" in start
    assert "Environment=SITQ_PROCESSES=1" in unit
    assert re.search(r"^SITQ_PROCESSES=1$", (WORKERS / "sitq-worker.env").read_text(), re.M)
    assert re.search(r"^KillMode=mixed$", unit, re.M)


def test_supervisord_program_drains_on_stop() -> None:
    config = configparser.RawConfigParser()
    config.read(WORKERS / "supervisord.conf")
    (program,) = [config[s] for s in config.sections() if s.startswith("program:")]
    grace = float(re.search(r"--grace (\S+)", program["command"]).group(1))  # type: ignore[union-attr]
    assert program["stopsignal"] == "TERM"
    assert float(program["stopwaitsecs"]) >= grace + 10
    assert program["stopasgroup"] == "false" and program["killasgroup"] == "true"
    assert program["user"] not in ("", "root")
    assert program["autorestart"] == "unexpected"
