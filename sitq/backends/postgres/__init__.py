"""The scale-out backend: PostgreSQL through asyncpg, shared by workers on many hosts."""

from sitq.backends.postgres.backend import PostgresBackend

__all__ = ["PostgresBackend"]
