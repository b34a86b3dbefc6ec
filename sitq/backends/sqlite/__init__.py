"""The embedded default backend: one SQLite file, shared by every process on the host."""

from sitq.backends.sqlite.backend import SQLiteBackend

__all__ = ["SQLiteBackend"]
