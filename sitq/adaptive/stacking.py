"""Turning requests into the one argument of ``process_func``, and its output back.

numpy items (at least one dimension) are stacked like ``np.vstack``: a 1-D
item of shape ``(d,)`` is one row, an item of shape ``(k, d, ...)`` adds ``k``
rows. The output's first dimension must match the stacked rows; a 1-D item
gets ``output[i]``, a k-row item gets ``output[i:i + k]`` (views into the
batch's output, as numpy indexing gives: copy one to keep it apart from the
rest of the batch; an output that shares the reused input buffer is copied
first). Items whose rows
have different shapes are never stacked together: they go to separate calls.
Anything else is passed as a list, and the output must hold one result per item.

numpy is imported only when a numpy item is seen (an ndarray implies numpy is
already imported), so this module works without it.
"""

from __future__ import annotations

import sys
from typing import Any

from sitq.adaptive.errors import BatchOutputError
from sitq.adaptive.pending import Request

__all__ = ["Stacker", "describe_item", "group_requests"]


def describe_item(item: Any) -> tuple[tuple[Any, ...] | None, int]:
    """The grouping key and row count of an item; a ValueError for a 0-d array."""
    numpy = sys.modules.get("numpy")
    if numpy is None or not isinstance(item, numpy.ndarray):
        return None, 1
    if item.ndim == 0:
        raise ValueError(
            "a 0-d numpy array cannot be stacked into a batch: pass np.atleast_1d(item) "
            "(one row) or a plain Python scalar (batched as a list)"
        )
    if item.ndim == 1:
        return ("ndarray", item.shape), 1
    return ("ndarray", item.shape[1:]), item.shape[0]


def group_requests(requests: list[Request]) -> list[list[Request]]:
    """Split a batch into groups that can share one call, keeping the order within each."""
    first_key = requests[0].key
    if all(r.key == first_key for r in requests):
        return [requests]
    groups: dict[tuple[Any, ...] | None, list[Request]] = {}
    for request in requests:
        groups.setdefault(request.key, []).append(request)
    return list(groups.values())


class Stacker:
    """Builds each call's argument and splits its output; optionally reuses buffers."""

    def __init__(self, reuse_buffers: bool) -> None:
        self.reuse_buffers = reuse_buffers
        self._buffers: dict[tuple[Any, ...], Any] = {}

    def combine(self, group: list[Request]) -> Any:
        """The argument for one call: a stacked array, or a list of the items."""
        if group[0].key is None:
            return [r.item for r in group]
        import numpy as np

        arrays = [r.item if r.item.ndim > 1 else r.item[np.newaxis] for r in group]
        if not self.reuse_buffers:
            return np.concatenate(arrays, axis=0)
        rows = sum(r.rows for r in group)
        dtype = np.result_type(*arrays)
        row_shape = group[0].key[1]
        slot = (row_shape, dtype.str)
        buffer = self._buffers.get(slot)
        if buffer is None or buffer.shape[0] < rows:
            capacity = max(rows, 0 if buffer is None else 2 * buffer.shape[0])
            buffer = self._buffers[slot] = np.empty((capacity, *row_shape), dtype=dtype)
        return np.concatenate(arrays, axis=0, out=buffer[:rows])

    def split(self, group: list[Request], output: Any, payload: Any) -> list[Any]:
        """One result per request, or a BatchOutputError saying what did not fit."""
        if group[0].key is None:
            return _split_generic(group, output)
        if self.reuse_buffers:
            import numpy as np

            # The next batch overwrites the buffer: results must not point into it.
            if isinstance(output, np.ndarray) and np.may_share_memory(output, payload):
                output = output.copy()
        return _split_rows(group, output)


def _split_generic(group: list[Request], output: Any) -> list[Any]:
    n = len(group)
    if isinstance(output, list):
        results = output
    else:
        try:
            results = list(output)
        except TypeError:
            raise BatchOutputError(
                f"process_func returned {type(output).__name__} for a batch of {n} items; "
                "it must return a sequence with one result per item, in order"
            ) from None
    if len(results) != n:
        raise BatchOutputError(
            f"process_func returned {len(results)} results for a batch of {n} items; "
            "it must return exactly one result per item, in order"
        )
    return results


def _split_rows(group: list[Request], output: Any) -> list[Any]:
    rows = sum(r.rows for r in group)
    shape = getattr(output, "shape", None)
    try:
        length = len(output)
    except TypeError:
        length = None
    if length != rows:
        key = group[0].key
        assert key is not None  # a stacked group holds numpy items, keyed ("ndarray", row shape)
        got = type(output).__name__ if length is None else f"{length} results"
        if shape is not None:
            got = f"shape {shape}"
        raise BatchOutputError(
            f"process_func returned {got} for a stacked batch of {rows} rows (from "
            f"{len(group)} items of row shape {key[1]}); its output's first "
            "dimension must equal the number of input rows, in order"
        )
    results = []
    offset = 0
    for request in group:
        end = offset + request.rows
        results.append(output[offset] if request.item.ndim == 1 else output[offset:end])
        offset = end
    return results
