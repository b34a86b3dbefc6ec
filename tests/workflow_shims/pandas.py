"""A stand-in for the few pandas calls the seed page's workflow examples make.

The workflow tests put this directory on PYTHONPATH only when pandas is not
installed, so the examples run as written either way. It reproduces pandas'
output for these calls (``read_csv``, ``len``, ``groupby(col).sum()``,
``groupby(col).agg({col: [...]})``, ``to_json(path)``), checked against pandas 3.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class Frame:
    """Columns of values keyed by group label, as pandas' to_json writes them."""

    def __init__(self, columns: dict[str, dict[str, Any]]) -> None:
        self.columns = columns

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write ``{column: {label: value}}`` like ``DataFrame.to_json``."""
        with open(path, "w") as out:
            json.dump(self.columns, out, separators=(",", ":"))


class GroupBy:
    """``df.groupby(column)``."""

    def __init__(self, rows: list[dict[str, Any]], key: str) -> None:
        self.key = key
        self.groups: dict[Any, list[dict[str, Any]]] = {}
        for row in sorted(rows, key=lambda r: r[key]):
            self.groups.setdefault(row[key], []).append(row)

    def sum(self) -> Frame:
        """Per group, the sum of every other column."""
        names = [c for c in next(iter(self.groups.values()))[0] if c != self.key]
        return Frame(
            {c: {str(g): sum(r[c] for r in rows) for g, rows in self.groups.items()} for c in names}
        )

    def agg(self, spec: dict[str, list[str]]) -> Frame:
        """Per group, each named aggregate of each named column."""
        functions = {
            "sum": sum,
            "mean": lambda values: sum(values) / len(values),
            "count": len,
            "min": min,
            "max": max,
        }
        columns = {}
        for column, names in spec.items():
            for name in names:
                columns[f"('{column}', '{name}')"] = {
                    str(g): functions[name]([r[column] for r in rows])
                    for g, rows in self.groups.items()
                }
        return Frame(columns)


class DataFrame:
    """The rows of a CSV file."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def groupby(self, key: str) -> GroupBy:
        """Group the rows by ``key``."""
        return GroupBy(self.rows, key)


def read_csv(path: str | os.PathLike[str]) -> DataFrame:
    """Read a CSV file with a header row; numbers become int or float."""
    with open(path, newline="") as source:
        return DataFrame(
            [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(source)]
        )
