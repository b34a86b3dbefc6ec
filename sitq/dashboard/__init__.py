"""``sitq dashboard``: a web UI to watch queues and workers, read failures, and
retry or cancel tasks (install with ``pip install 'sitq[dashboard]'``).

:func:`create_app` builds the ASGI app; ``sitq dashboard`` serves it with uvicorn.
"""

from __future__ import annotations

from sitq.dashboard.app import DashboardConfig, create_app

__all__ = ["DashboardConfig", "create_app"]
