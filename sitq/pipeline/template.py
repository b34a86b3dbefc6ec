"""``Pipeline``: a template declaring input fields and the work one instance does."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, ClassVar

from sitq.pipeline import telemetry
from sitq.pipeline.errors import FieldError, PipelineDefinitionError
from sitq.pipeline.fields import MISSING, Field

__all__ = ["Pipeline"]


class Pipeline:
    """A pipeline template: declare fields as class attributes, override ``process``.

    ::

        class WordCount(Pipeline):
            name = InputDataField(data_type=list, batch_size=5)
            book = FileInputDataField(required=True, chunk_size=1024)

            def process(self) -> int:
                return len(self.book.split())

    ``WordCount(name=[...], book="book.txt").execute()`` runs one instance in
    this process on the whole inputs; a :class:`~sitq.pipeline.BatchPipeline`
    runs one instance per batch, in parallel. ``process`` may be a coroutine
    function. Instances are shipped to other processes with cloudpickle, so
    what ``process`` returns must be picklable.
    """

    #: The template's fields by name, in declaration order (base classes first).
    fields: ClassVar[dict[str, Field]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields: dict[str, Field] = {}
        for klass in reversed(cls.__mro__):
            for name, attr in vars(klass).items():
                if isinstance(attr, Field):
                    if name in _RESERVED:
                        raise PipelineDefinitionError(
                            f"{cls.__name__}.{name}: a field cannot be named {name!r}, which "
                            "Pipeline itself uses; rename the field"
                        )
                    fields[name] = attr
                elif name in fields and klass is not Pipeline:
                    del fields[name]  # a subclass replaced the field with something else
        cls.fields = fields

    def __init__(self, **values: Any) -> None:
        """Give the fields their values by name; each is validated now."""
        self._inputs = validate_inputs(type(self), values)
        self._values: dict[str, Any] | None = None
        self.batch_index: int | None = None

    @classmethod
    def for_batch(cls, index: int, values: dict[str, Any]) -> Pipeline:
        """An instance for batch ``index`` holding these ready values (not validated:
        a field whose batches ran out holds None)."""
        instance = cls.__new__(cls)
        instance._inputs = values
        instance._values = values
        instance.batch_index = index
        return instance

    def _field_value(self, name: str) -> Any:
        values = self._values if self._values is not None else self._inputs
        return values[name]

    def __repr__(self) -> str:
        where = "" if self.batch_index is None else f" batch {self.batch_index}"
        return f"<{type(self).__name__}{where}>"

    def process(self) -> Any:
        """The work of one instance; override it. Its return value is the instance's
        result. The default returns this instance's field values by name."""
        return {name: getattr(self, name) for name in self.fields}

    def _resolve(self) -> None:
        if self._values is None:
            self._values = {
                name: field.whole(self._inputs[name]) for name, field in self.fields.items()
            }

    def execute(self) -> Any:
        """Run this one instance here and return what ``process`` returns (its
        exception propagates). A file field's whole content is read first."""
        if inspect.iscoroutinefunction(self.process):
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                # One instance, no queue: no loop to share, so a fresh one here.
                return asyncio.run(self.execute_async())
            raise RuntimeError(
                f"{type(self).__name__}.process is a coroutine function and an event loop "
                "is running here: use `await pipeline.execute_async()`"
            )
        with telemetry.current.observe_instance(type(self).__qualname__, self.batch_index):
            self._resolve()
            return self.process()

    async def execute_async(self) -> Any:
        """Like :meth:`execute`, awaiting ``process`` if it is a coroutine function."""
        with telemetry.current.observe_instance(type(self).__qualname__, self.batch_index):
            self._resolve()
            value = self.process()
            if inspect.isawaitable(value):
                value = await value
            return value


_RESERVED = frozenset(dir(Pipeline)) | {"_inputs", "_values", "batch_index"}


def validate_inputs(template: type[Pipeline], values: dict[str, Any]) -> dict[str, Any]:
    """Every field's validated value (defaults filled in); unknown names are an error."""
    unknown = sorted(set(values) - set(template.fields))
    if unknown:
        known = ", ".join(template.fields) or "none"
        raise FieldError(
            unknown[0],
            f"{template.__name__} has no field {', '.join(map(repr, unknown))} "
            f"(its fields: {known}); declare it on the template or drop the argument",
        )
    return {
        name: field.validate(values.get(name, MISSING)) for name, field in template.fields.items()
    }
