#!/usr/bin/env python3
"""Fail when one part of sitq uses a private name of another part.

import-linter checks which modules import which; it cannot see names. This
checks the other half of the layering rule: a name that starts with one
underscore (``_Enqueuer``, ``_new_tasks``; not dunders such as ``__version__``)
is private to the part of sitq that defines it.

A *part* is a top-level subpackage or module of sitq: ``sitq.queue``,
``sitq.worker`` (with everything under it), ``sitq.backends`` (with ``base``,
``sqlite`` and ``postgres``), ``sitq.workflow``, and so on. Inside one part,
modules may share privates (``sitq.backends.sqlite`` may use a helper of
``sitq.backends.base``; ``sitq.workflow.lint`` one of ``sitq.workflow.spec``):
a part is one unit of code, reviewed and changed together. Across parts, a
private name must become public (or move) first.

Two checks:

- **imports** (exact): ``from sitq.queue import _Enqueuer`` in another part, a
  relative form of it, or a private module (``sitq.x._impl``). Imports under
  ``if TYPE_CHECKING:`` count too.
- **attributes** (a heuristic): ``obj._name`` where ``obj`` is not ``self`` or
  ``cls`` and no module of the reading part defines ``_name`` (as a function,
  class, assigned attribute or variable, parameter or ``__slots__`` entry), so
  it must be another part's: ``self._queue._new_tasks`` in ``sitq.sync_queue``.
  Attributes of modules imported from outside sitq (``os._exit``) and the public
  namedtuple API (``_replace``, ...) are not sitq's privates and are skipped. A
  private name that the reading part also defines for itself is not seen.

Usage: ``python .ci/check_private_imports.py [PACKAGE_DIR]`` (default ``sitq``).
Exit status 1 and one line per violation when any is found.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

#: The namedtuple API: public despite the underscore.
NAMEDTUPLE_API = frozenset({"_replace", "_asdict", "_fields", "_field_defaults", "_make"})


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


class _Module:
    """One parsed module of the package."""

    def __init__(self, path: Path, root: Path) -> None:
        self.path = path
        self.name = module_name(path, root)
        self.part = part_of(self.name)
        self.is_package = path.name == "__init__.py"
        self.tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def defined_privates(self) -> set[str]:
        """The private names this module defines, in any way it can."""
        names: set[str] = set()
        for node in ast.walk(self.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias):
                names.add(node.asname or node.name.split(".")[0])
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)  # __slots__ entries, getattr(obj, "_name")
        return {name for name in names if _is_private(name)}

    def outside_modules(self, package: str) -> set[str]:
        """Local names bound to modules imported from outside the package (``os``)."""
        names: set[str] = set()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] != package:
                        names.add(alias.asname or alias.name.split(".")[0])
        return names


def import_violations(module: _Module, package: str) -> Iterator[tuple[int, str]]:
    """Imports of another part's private names or modules."""
    for node in ast.walk(module.tree):
        targets: list[tuple[str, str]]  # (module, name or "")
        if isinstance(node, ast.ImportFrom):
            source = _resolve(module.name, module.is_package, node)
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
            if module.part == owner:
                continue
            yield (
                node.lineno,
                (
                    f"{module.path}:{node.lineno}: {module.name} imports private "
                    f"{', '.join(private)} from {source} (another part of {package}: "
                    "make it public or move it)"
                ),
            )


def attribute_violations(module: _Module, own: set[str], package: str) -> Iterator[tuple[int, str]]:
    """Reads of a private attribute that the module's own part never defines."""
    outside = module.outside_modules(package)
    for node in ast.walk(module.tree):
        if not isinstance(node, ast.Attribute) or not _is_private(node.attr):
            continue
        if node.attr in own or node.attr in NAMEDTUPLE_API:
            continue
        if isinstance(node.value, ast.Name) and node.value.id in {"self", "cls", *outside}:
            continue
        yield (
            node.lineno,
            (
                f"{module.path}:{node.lineno}: {module.name} uses {ast.unparse(node)}, a private "
                f"name no module of {module.part} defines (another part's: make it public)"
            ),
        )


def violations(root: Path) -> Iterator[str]:
    """Every use of a private name across parts of the package at ``root``."""
    package = root.name
    modules = [_Module(path, root) for path in sorted(root.rglob("*.py"))]
    own: dict[str, set[str]] = {}
    for module in modules:
        own.setdefault(module.part, set()).update(module.defined_privates())
    for module in modules:
        found = [
            *import_violations(module, package),
            *attribute_violations(module, own[module.part], package),
        ]
        for _, text in sorted(found):
            yield text


def main(argv: list[str]) -> int:
    """Check the package directory named on the command line (default ``sitq``)."""
    root = Path(argv[1] if len(argv) > 1 else "sitq")
    found = list(violations(root))
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} private name(s) used across parts of {root.name}")
        return 1
    print(f"no private names used across parts of {root.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
