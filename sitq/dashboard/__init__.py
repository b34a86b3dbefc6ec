"""``sitq dashboard``: a web UI to watch queues and workers, read failures, and
retry or cancel tasks (install with ``pip install 'sitq[dashboard]'``).

:func:`create_app` builds the ASGI app; ``sitq dashboard`` serves it with uvicorn.
Importing this package needs no extra: the app's modules load on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DashboardConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from sitq.dashboard import app

        return getattr(app, name)
    raise AttributeError(f"module 'sitq.dashboard' has no attribute {name!r}")
