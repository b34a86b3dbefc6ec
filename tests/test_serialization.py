"""The default serializer: fast for plain calls, cloudpickle for code sent by value."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import cloudpickle
import jobs
import pytest
from support import WorkerProcess, subprocess_env

from sitq.serialization import CloudpickleSerializer

serializer = CloudpickleSerializer()


@pytest.mark.parametrize(
    "value",
    [
        (jobs.add, (1, 2), {}),
        (jobs.echo_kwargs, ("x", b"y", 1.5, None), {"when": datetime.now(timezone.utc)}),
        {"nested": [1, (2, 3), {"four": 4}]},
        None,
    ],
)
def test_plain_calls_give_cloudpickles_bytes(value: object) -> None:
    assert serializer.dumps(value) == cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    assert serializer.loads(serializer.dumps(value)) == value


def test_code_without_an_importable_name_goes_by_value() -> None:
    def local(x: int) -> int:
        return x + 1

    def make_adder(n: int) -> Callable[[int], int]:
        return lambda x: x + n

    for fn in (local, make_adder(5), lambda: 3):
        with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
            pickle.dumps(fn)
        assert serializer.dumps(fn) == cloudpickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    assert serializer.loads(serializer.dumps(make_adder(5)))(1) == 6


def test_functions_defined_in_main_run_in_a_worker_process(
    db_path: Path, tmp_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """A script's own functions live in __main__, which a worker cannot import:
    they must travel by value, or the worker would fail to load them."""
    script = tmp_path / "app.py"
    script.write_text(
        "import sys\n"
        "from sitq import SyncTaskQueue\n"
        "class Point:\n"
        "    def __init__(self, x): self.x = x\n"
        "def double(p):\n"
        "    return Point(p.x * 2).x\n"
        "with SyncTaskQueue(sys.argv[1]) as queue:\n"
        "    task_id = queue.enqueue(double, Point(21))\n"
        "    result = queue.get_result(task_id, timeout=30)\n"
        "    print(result.value if result.ok else result.error)\n"
    )
    subprocess.run([sys.executable, "-m", "sitq.cli", "init", "--db", str(db_path)], check=True)
    spawn_worker("--lease", "5").wait_started()
    run = subprocess.run(
        [sys.executable, str(script), str(db_path)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "42"
