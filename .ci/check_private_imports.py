#!/usr/bin/env python3
"""Fail when a sitq module imports a private name from another part of sitq.

import-linter checks which modules import which; it cannot see names. This
checks the other half of the layering rule: a name that starts with one
underscore (``_Enqueuer``, ``_to_datetime``; not dunders such as
``__version__``) is private to the part of sitq that defines it.

A *part* is a top-level subpackage or module of sitq: ``sitq.queue``,
``sitq.worker`` (with everything under it), ``sitq.backends`` (with ``base``,
``sqlite`` and ``postgres``), ``sitq.workflow``, and so on. Inside one part,
modules may share privates (``sitq.backends.sqlite`` may use a helper of
``sitq.backends.base``; ``sitq.workflow.lint`` one of ``sitq.workflow.spec``):
a part is one unit of code, reviewed and changed together. Across parts, a
private name must become public (or move) first. Private *modules*
(``sitq.x._impl``) follow the same rule. Imports under ``if TYPE_CHECKING:``
count too.

Usage: ``python .ci/check_private_imports.py [PACKAGE_DIR]`` (default ``sitq``).
Exit status 1 and one line per violation when any is found.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_name(path: Path, root: Path) -> str:
    """The dotted name of the module at ``path`` inside the package at ``root``."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    """The top-level part of sitq a module is in: ``sitq.backends.base`` -> ``sitq.backends``."""
    return ".".join(module.split(".")[:2])


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names, relative forms included."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    # A relative import counts from the importer's package: the module itself
    # for an __init__, its parent otherwise.
    drop = node.level - 1 if is_package else node.level
    base = base[: len(base) - drop] if drop else base
    return ".".join([*base, node.module] if node.module else base)


def violations(root: Path) -> Iterator[str]:
    """Every cross-part import of a private name or module under ``root``."""
    package = root.name
    for path in sorted(root.rglob("*.py")):
        importer = module_name(path, root)
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            targets: list[tuple[str, str]]  # (module, name or "")
            if isinstance(node, ast.ImportFrom):
                source = _resolve(importer, is_package, node)
                targets = [(source, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [(alias.name, "") for alias in node.names]
            else:
                continue
            for source, name in targets:
                if source != package and not source.startswith(package + "."):
                    continue
                full = f"{source}.{name}" if name else source
                private = [p for p in full.split(".") if _is_private(p)]
                if not private:
                    continue
                # The part that owns the private name: `from sitq import _x` is the
                # root package's own; `from sitq.queue import _x` belongs to sitq.queue.
                owner = package if source == package else part_of(source)
                if part_of(importer) == owner:
                    continue
                yield (
                    f"{path}:{node.lineno}: {importer} imports private "
                    f"{', '.join(private)} from {source} (another part of {package}: "
                    "make it public or move it)"
                )


def main(argv: list[str]) -> int:
    """Check the package directory named on the command line (default ``sitq``)."""
    root = Path(argv[1] if len(argv) > 1 else "sitq")
    found = list(violations(root))
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} private import(s) across parts of {root.name}", file=sys.stderr)
        return 1
    print(f"no private imports across parts of {root.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
