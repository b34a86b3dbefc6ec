"""The adaptive batch size: measured, not guessed.

Each successful call's (items, seconds) feeds a fit of ``t(n) = a + b*n``,
weighted toward recent batches. From it the *latency cap* is the largest
``n`` with ``t(n) <= batch_timeout``: a bigger batch would keep its items
longer than the latency budget just being processed. Then, at each dispatch:

- a batch sent because its oldest item timed out, not full, shows how much
  arrives within the budget: the size shrinks to what was sent;
- a full batch that leaves at least a quarter of a batch waiting shows the
  queue backing up: the size grows by what is left waiting (at most
  doubling). A few items left over do not count: with P producers each
  waiting for its result, a size just under P keeps batches full without
  ever waiting for the slowest producer.

A batch that fails whole while its halves succeed (bisection found no
failing item) failed because of its size: the size is halved below it.

The size is always clamped to ``[min_batch_size, cap]``. Memory pressure
shrinks the size by a quarter and stops growth (warning) or halves the size
at every check (critical); a critical queue backlog doubles it and lifts the
cap, since waiting in the backlog already costs more than the budget.

Not thread-safe: the processor calls it under its lock.
"""

from __future__ import annotations

import math

from sitq.adaptive.config import AdaptiveBatchConfig

__all__ = ["BatchSizer"]

#: Weight kept by older observations at each new one (about 20 batches of memory).
_DECAY = 0.95


class BatchSizer:
    """Tracks processing time against batch size and decides the next batch size."""

    def __init__(self, config: AdaptiveBatchConfig) -> None:
        self.min = config.min_batch_size
        self.max = config.max_batch_size
        self.budget = config.batch_timeout
        self.target = config.initial_batch_size
        self.memory_level = "ok"
        self.queue_critical = False
        # Decayed sums for the weighted least-squares fit of t = a + b*n.
        self._w = self._wn = self._wt = self._wnn = self._wnt = 0.0

    # -- measurements -------------------------------------------------------

    def observe(self, items: int, seconds: float) -> None:
        """Record one successful call of ``items`` items that took ``seconds``."""
        if items <= 0:
            return
        d = _DECAY
        self._w = self._w * d + 1.0
        self._wn = self._wn * d + items
        self._wt = self._wt * d + seconds
        self._wnn = self._wnn * d + items * items
        self._wnt = self._wnt * d + items * seconds
        self._clamp()

    def model(self) -> tuple[float, float] | None:
        """The fitted ``(a, b)`` of ``t(n) = a + b*n`` in seconds, or None before data."""
        if self._w == 0.0:
            return None
        mean_n = self._wn / self._w
        mean_t = self._wt / self._w
        var_n = self._wnn / self._w - mean_n * mean_n
        if var_n > 1e-9 * max(1.0, mean_n * mean_n):
            b = (self._wnt / self._w - mean_n * mean_t) / var_n
            a = mean_t - b * mean_n
            if b > 0 and a >= 0:
                return a, b
        # One size seen (or a noisy fit): assume cost proportional to size, which
        # overestimates larger batches when there is a fixed per-call cost: safe.
        return 0.0, mean_t / mean_n

    def cap(self) -> int:
        """The largest size whose predicted processing time fits the latency budget."""
        if self.budget <= 0 or self.queue_critical:
            return self.max
        fit = self.model()
        if fit is None:
            return self.max
        a, b = fit
        if b <= 0:
            return self.max
        room = (self.budget - a) / b
        if not math.isfinite(room):
            return self.max
        return max(self.min, min(self.max, int(room)))

    # -- decisions ---------------------------------------------------------

    def after_dispatch(self, sent: int, full: bool, left_waiting: int) -> None:
        """Adapt to one dispatch: ``sent`` items, whether it was full, what still waits."""
        if not full:
            self.target = max(self.min, min(self.target, sent))
        elif left_waiting >= max(1, self.target // 4) and self.memory_level == "ok":
            self.target += min(left_waiting, self.target)
        self._clamp()

    def size_failed(self, items: int) -> None:
        """A batch of ``items`` failed whole while its parts succeeded: halve below it."""
        self.target = max(self.min, min(self.target, items) // 2)

    def memory_pressure(self, level: str, entering: bool) -> None:
        """React to a memory check: ``ok``; ``warning``: shrink by a quarter on entering,
        then no growth; ``critical``: halve at every check."""
        self.memory_level = level
        if level == "critical":
            self.target = max(self.min, self.target // 2)
        elif level == "warning" and entering:
            self.target = max(self.min, self.target - self.target // 4)

    def queue_pressure(self, critical: bool) -> None:
        """React to a queue check: a critical backlog doubles the size and lifts the cap."""
        self.queue_critical = critical
        if critical and self.memory_level == "ok":
            self.target = min(self.max, self.target * 2)

    def _clamp(self) -> None:
        self.target = max(self.min, min(self.target, self.cap()))
