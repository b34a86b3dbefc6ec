"""One worker process against `sitq worker --processes 2`, checkouts alternating.

    python benchmarks/processes_ab.py CHECKOUT [CHECKOUT ...] [--tasks 60000] [--reps 4]

Each round runs, for each checkout in turn (the order reversed every other
round), run.py's drain of TASKS no-ops by one `sitq worker --concurrency 8` and
by one `sitq worker --processes 2 --concurrency 8`, each with its own checkout's
code, and prints the medians and the ratio of two processes to one. Each
checkout needs its own `.venv` (`make install`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DRAIN = """
import sys
sys.path.insert(0, ".")
from pathlib import Path
import run
print(run.drain_sitq(Path({tmp!r}), {tasks}, {processes}, supervised={supervised}))
"""


def drain(checkout: Path, tasks: int, processes: int) -> float:
    """Tasks/s of ``checkout``'s workers draining ``tasks`` no-ops."""
    with tempfile.TemporaryDirectory() as tmp:
        code = DRAIN.format(tmp=tmp, tasks=tasks, processes=processes, supervised=processes > 1)
        done = subprocess.run(
            [str(checkout / ".venv" / "bin" / "python"), "-c", code],
            cwd=checkout / "benchmarks",
            capture_output=True,
            text=True,
        )
    if done.returncode:
        raise RuntimeError(f"{checkout}: the drain failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", type=Path)
    parser.add_argument("--tasks", type=int, default=60_000)
    parser.add_argument("--reps", type=int, default=4)
    args = parser.parse_args()
    rates: dict[tuple[Path, int], list[float]] = {}
    for rep in range(args.reps):
        order = args.checkouts if rep % 2 == 0 else list(reversed(args.checkouts))
        for checkout in order:
            for processes in (1, 2):
                rate = drain(checkout.resolve(), args.tasks, processes)
                rates.setdefault((checkout, processes), []).append(rate)
    for checkout in args.checkouts:
        one, two = (statistics.median(rates[(checkout, p)]) for p in (1, 2))
        print(
            f"{checkout}: one process {one:,.0f} tasks/s, --processes 2 {two:,.0f} "
            f"({two / one:.2f}x; medians of {args.reps})"
        )


if __name__ == "__main__":
    sys.exit(main())
