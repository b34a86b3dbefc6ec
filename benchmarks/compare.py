"""Two checkouts of sitq measured side by side, alternating, in one run.

    python benchmarks/compare.py BEFORE AFTER [--rounds N] [--reps N] [--only NAME ...]

BEFORE and AFTER are checkouts, each with its own `.venv` (`pip install -e
'.[dev,bench]'`). Each round runs `benchmarks/run.py` in both, in the order
before/after on even rounds and after/before on odd ones, so a machine that
slows down over the run does not favour either side. Prints one Markdown table:
each row's median over the rounds (each round's figure is itself run.py's
median over --reps), and after / before. Rows where lower is better are marked.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROW = re.compile(r"^\| (?P<label>[^|]+?) \| (?P<median>[\d,.]+) \|.*\| (?P<unit>[^|]+?) \|$")
LOWER_IS_BETTER = ("ms", "µs", "MB", "% of a core")  # units of rows where less is better


def run_once(checkout: Path, reps: int, only: list[str]) -> dict[str, tuple[float, str]]:
    """Run run.py in one checkout and return {row label: (median, unit)}."""
    python = checkout / ".venv" / "bin" / "python"
    command = [str(python), "benchmarks/run.py", "--reps", str(reps), "--only", *only]
    subprocess.run(command, cwd=checkout, check=True, stdout=subprocess.DEVNULL)
    rows: dict[str, tuple[float, str]] = {}
    for line in (checkout / "benchmarks" / "last_run.md").read_text().splitlines():
        match = ROW.match(line)
        if match and match["label"] != "what":
            rows[match["label"]] = (float(match["median"].replace(",", "")), match["unit"])
    return rows


def main() -> None:
    """Parse the arguments, alternate the two checkouts, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=["enqueue", "drain", "latency"])
    args = parser.parse_args()
    samples: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    units: dict[str, str] = {}
    for round_no in range(args.rounds):
        order = ["before", "after"] if round_no % 2 == 0 else ["after", "before"]
        for side in order:
            rows = run_once(getattr(args, side).resolve(), args.reps, args.only)
            for label, (value, unit) in rows.items():
                samples[side].setdefault(label, []).append(value)
                units[label] = unit
            print(f"round {round_no + 1}: {side} done", file=sys.stderr, flush=True)
    print("| row | unit | before | after | after / before |")
    print("| --- | --- | ---: | ---: | ---: |")
    for label, before in samples["before"].items():
        after = samples["after"].get(label)
        if not after:
            continue
        b, a = statistics.median(before), statistics.median(after)
        note = " (lower is better)" if units[label] in LOWER_IS_BETTER else ""
        print(f"| {label} | {units[label]} | {b:,.2f} | {a:,.2f} | {a / b:.3f}{note} |")


if __name__ == "__main__":
    main()
