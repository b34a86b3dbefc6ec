"""The step-wise rule that turns a batch pipeline's inputs into instances.

Each batched field gets a generator of batches: the user's ``{field}_batch``
method if the batch pipeline defines one, else the field's default batching.
The generators advance in step; instance ``i`` gets batch ``i`` of every
batched field, and ``None`` for a field whose batches ran out. Fields without
batching are given whole to every instance. With no batched field at all
there is exactly one instance; when every batched field is empty, none.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Generator, Iterator
from typing import Any

from sitq.pipeline.errors import PipelineDefinitionError
from sitq.pipeline.template import Pipeline

__all__ = ["instances"]

#: A ``{field}_batch`` method, unbound: (batch pipeline, data, size) -> batches.
Batcher = Callable[[Any, Any, "int | None"], Iterator[Any]]


def instances(
    owner: Any,
    template: type[Pipeline],
    inputs: dict[str, Any],
    batchers: dict[str, Batcher],
) -> Generator[Pipeline, None, None]:
    """Yield the template instances, reading the inputs only as they are needed.

    ``owner`` is the batch pipeline (``self`` for the batchers). Files a field
    opened are closed when the generator ends or is closed.
    """
    with contextlib.ExitStack() as files:
        whole: dict[str, Any] = {}
        streams: dict[str, Iterator[Any]] = {}
        for name, field in template.fields.items():
            value = inputs[name]
            batcher = batchers.get(name)
            if batcher is None and field.size is None:
                whole[name] = field.whole(value)
            elif value is None:
                streams[name] = iter(())
            else:
                source = files.enter_context(field.source(value))
                if batcher is None:
                    streams[name] = field.batches(source)
                else:
                    streams[name] = _checked(owner, name, batcher(owner, source, field.size))
        if not streams:
            yield template.for_batch(0, whole)
            return
        names = list(streams)
        steps = itertools.zip_longest(*streams.values(), fillvalue=None)
        for index, step in enumerate(steps):
            batch = dict(zip(names, step, strict=True))
            yield template.for_batch(index, {name: _pick(name, whole, batch) for name in inputs})


def _pick(name: str, whole: dict[str, Any], batch: dict[str, Any]) -> Any:
    return batch[name] if name in batch else whole[name]


def _checked(owner: Any, name: str, batches: Any) -> Iterator[Any]:
    if not isinstance(batches, Iterator):
        raise PipelineDefinitionError(
            f"{type(owner).__name__}.{name}_batch returned a {type(batches).__name__}, not a "
            "generator: write it with `yield`, one batch per yield"
        )
    return batches
