"""Small formatting helpers the templates use: ages, times, and the geometry of
the trend charts and progress bars (drawn as inline SVG, so no chart library)."""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import quote

from sitq.dashboard.history import HISTORY_SECONDS

CHART_WIDTH = 160
CHART_HEIGHT = 28
BAR_WIDTH = 240
#: The shortest time span a trend chart spreads over its width.
MIN_CHART_SECONDS = 10.0
#: Progress bar segments, in drawing order, with their CSS class.
SEGMENTS = ("succeeded", "failed", "cancelled", "running", "queued", "pending")


def age(seconds: float | None) -> str:
    """``4.2s``, ``12m``, ``3.1h``: short and readable."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def when(value: float | None) -> str:
    """A unix time as ``2024-05-01 12:00:00.123 UTC``."""
    if value is None:
        return "-"
    moment = datetime.fromtimestamp(value, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"


def polyline(points: list[tuple[float, float]]) -> str:
    """SVG polyline points for (seconds ago, value) pairs: time runs left to right
    over the history kept so far (at least ``MIN_CHART_SECONDS``, at most the
    history window), values are scaled to the chart's height."""
    if not points:
        return ""
    top = max(value for _, value in points) or 1.0
    span = min(HISTORY_SECONDS, max(MIN_CHART_SECONDS, max(ago for ago, _ in points)))
    coords = []
    for ago, value in sorted(points, key=lambda p: -p[0]):
        x = CHART_WIDTH * (1 - min(ago, span) / span)
        y = CHART_HEIGHT - 2 - (CHART_HEIGHT - 4) * value / top
        coords.append(f"{x:.1f},{y:.1f}")
    return " ".join(coords)


def segments(counts: dict[str, int], size: int) -> list[tuple[str, float, float, int]]:
    """Progress bar pieces (status, x, width, count) for ``size`` tasks or items."""
    total = max(size, sum(counts.values()), 1)
    pieces = []
    x = 0.0
    for status in SEGMENTS:
        n = counts.get(status, 0)
        if n:
            width = BAR_WIDTH * n / total
            pieces.append((status, x, width, n))
            x += width
    return pieces


def percent(value: float | None) -> str:
    """``12.5%``, or ``-`` when there is nothing to divide."""
    return "-" if value is None else f"{value * 100:.1f}%"


def path(value: str) -> str:
    """A name (a queue's, a run's) as one URL path segment: every reserved character,
    the slash too, percent-encoded."""
    return quote(str(value), safe="")


def file_name(source: str) -> str:
    """A workflow file's name without its folders (a run without ``name:`` is shown
    by it; the full path would widen the runs table past the window)."""
    return source.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or source


def size(value: int | None) -> str:
    """A byte count as ``812 B``, ``3.4 KB``, ``200.0 MB`` (decimal units)."""
    if value is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"
