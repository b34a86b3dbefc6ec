"""Input fields of a pipeline template: what each instance is given.

Fields are declared on a :class:`~sitq.pipeline.Pipeline` subclass (see its
example). Inside an instance, ``self.<field>`` is that instance's value: under a
``BatchPipeline`` one batch of the input (or the whole input for a field
without batching), in a plain ``Pipeline`` run the whole input. A file field's
value inside an instance is file content (``str`` in text mode, ``bytes`` in
``"rb"``), never a path or a stream, so instances can run in other processes.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

from sitq.pipeline.errors import FieldError, FieldTypeError

__all__ = ["MISSING", "Field", "FileInputDataField", "InputDataField"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: Stands for "no value was given for this field".
MISSING: Any = _Missing()


def _check_size(kind: str, what: str, size: Any) -> int | None:
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(
            f"{kind}({what}={size!r}): {what} must be a positive int (items or "
            "characters per batch), or None for no batching"
        )
    return size


class Field:
    """What every field has: a name (set when its class is created), whether a
    value is required, a default, and an optional batch size.

    Subclasses say how a value is checked (``check``), split into batches
    (``batches``) and given whole to an instance (``whole``).
    """

    def __init__(self, *, required: bool = False, default: Any = None, size: int | None) -> None:
        if not isinstance(required, bool):
            raise TypeError(f"{type(self).__name__}(required={required!r}): must be True or False")
        self.required = required
        self.default = default
        self.size = size
        self.name = "<unnamed>"
        self.owner = "<no pipeline>"

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.owner = owner.__name__

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return instance._field_value(self.name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.owner}.{self.name}>"

    @property
    def label(self) -> str:
        """How error messages name this field."""
        return f"field {self.name!r} of {self.owner}"

    def validate(self, value: Any) -> Any:
        """The value to use for this field, given what the caller passed
        (``MISSING`` if nothing); raises :class:`FieldError` naming the field."""
        if value is MISSING or value is None:
            if self.required:
                raise FieldError(
                    self.name,
                    f"{self.label} is required: pass {self.owner}({self.name}=...) "
                    "with a value that is not None",
                )
            return self.default if value is MISSING else None
        self.check(value)
        return value

    def check(self, value: Any) -> None:
        """Raise :class:`FieldError` if ``value`` cannot be used (it is not None)."""

    def source(self, value: Any) -> contextlib.AbstractContextManager[Any]:
        """A context giving what batching reads from: the value itself, or an open stream."""
        return contextlib.nullcontext(value)

    def batches(self, source: Any) -> Iterator[Any]:
        """The default batching of ``source`` in batches of ``size``."""
        raise NotImplementedError

    def whole(self, value: Any) -> Any:
        """The value an instance gets when this field is not batched."""
        return value


class InputDataField(Field):
    """A value passed to the pipeline, optionally split into batches.

    :param data_type: a type (or tuple of types) the value must be an instance
        of; None accepts anything.
    :param batch_size: under a ``BatchPipeline``, each instance gets this many
        items (a slice of a list, tuple, string or other sliceable; a dict of
        that many entries of a mapping; a list of that many items of any other
        iterable). None passes the whole value to every instance.
    :param required: a missing (or None) value is an error.
    :param default: the value when none is given and the field is not required.
    """

    def __init__(
        self,
        data_type: type | tuple[type, ...] | None = None,
        batch_size: int | None = None,
        required: bool = False,
        default: Any = None,
    ) -> None:
        types = data_type if isinstance(data_type, tuple) else (data_type,)
        if data_type is not None and not all(isinstance(t, type) for t in types):
            raise TypeError(
                f"InputDataField(data_type={data_type!r}): data_type must be a type, a tuple "
                "of types, or None to accept any value"
            )
        super().__init__(
            required=required,
            default=default,
            size=_check_size("InputDataField", "batch_size", batch_size),
        )
        self.data_type = data_type
        self.batch_size = self.size  #: items per batch, or None
        self._expected = " or ".join(t.__name__ for t in types if t is not None)

    def check(self, value: Any) -> None:
        """Check the type, and that a batched value can be split."""
        if self.data_type is not None and not isinstance(value, self.data_type):
            raise FieldTypeError(
                self.name,
                f"{self.label} must be a {self._expected}, got {type(value).__name__} "
                f"{_short(value)}; convert it before passing it",
            )

    def check_batchable(self, value: Any) -> None:
        """Default batching needs an iterable; raise :class:`FieldTypeError` if not."""
        if value is not None and not isinstance(value, Iterable):
            raise FieldTypeError(
                self.name,
                f"{self.label} has batch_size={self.size} but its value, a "
                f"{type(value).__name__} {_short(value)}, cannot be split into batches; "
                "pass a list or other iterable, or drop batch_size",
            )

    def batches(self, source: Any) -> Iterator[Any]:
        """Slices of ``size`` items (dicts for mappings, lists for other iterables)."""
        size = self.size or 1
        if isinstance(source, Mapping):
            items = iter(source.items())
            while part := dict(itertools.islice(items, size)):
                yield part
        elif hasattr(source, "__getitem__") and hasattr(source, "__len__"):
            for start in range(0, len(source), size):
                yield source[start : start + size]
        else:
            iterator = iter(source)
            while chunk := list(itertools.islice(iterator, size)):
                yield chunk


class FileInputDataField(Field):
    """A file given as a path or an open stream, read in chunks, never whole.

    :param required: a missing (or None) value is an error.
    :param chunk_size: under a ``BatchPipeline``, each instance gets this many
        characters (text mode) or bytes (``"rb"``) of the file, read as the
        instances are started. None gives every instance the whole content.
    :param mode: ``"r"`` (text, the default) or ``"rb"`` (bytes).
    :param encoding: the text encoding (default UTF-8); text mode only.
    :param default: the path (or stream) when none is given and it is not required.

    A path is opened (and closed) by the pipeline; a stream passed in is read
    from its current position and left open.
    """

    def __init__(
        self,
        required: bool = False,
        chunk_size: int | None = None,
        mode: str = "r",
        encoding: str | None = None,
        default: Any = None,
    ) -> None:
        if mode not in ("r", "rt", "rb"):
            raise ValueError(
                f"FileInputDataField(mode={mode!r}): a file field only reads; use 'r' for "
                "text or 'rb' for bytes"
            )
        if encoding is not None and "b" in mode:
            raise ValueError(
                f"FileInputDataField(mode={mode!r}, encoding={encoding!r}): bytes mode has "
                "no encoding; drop encoding or use mode='r'"
            )
        super().__init__(
            required=required,
            default=default,
            size=_check_size("FileInputDataField", "chunk_size", chunk_size),
        )
        self.mode = mode
        self.encoding = None if "b" in mode else (encoding or "utf-8")
        self.chunk_size = self.size  #: characters (or bytes) per chunk, or None

    def check(self, value: Any) -> None:
        """A readable path, or an open readable stream."""
        if isinstance(value, (str, os.PathLike)):
            try:
                with self._open(value):
                    pass
            except OSError as exc:
                raise FieldError(
                    self.name,
                    f"{self.label} cannot read {os.fspath(value)!r}: {exc.strerror or exc}; "
                    "pass the path of a readable file, or an open stream",
                ) from exc
            return
        read = getattr(value, "read", None)
        if not callable(read):
            raise FieldTypeError(
                self.name,
                f"{self.label} must be a file path or an open stream, got "
                f"{type(value).__name__} {_short(value)}",
            )
        if getattr(value, "closed", False):
            raise FieldError(self.name, f"{self.label} was given a closed stream; pass it open")
        readable = getattr(value, "readable", None)
        if callable(readable) and not readable():
            raise FieldError(
                self.name,
                f"{self.label} was given a stream that is not readable; open it with "
                f"mode {self.mode!r}",
            )

    def _open(self, path: str | os.PathLike[str]) -> IO[Any]:
        return open(path, self.mode, encoding=self.encoding)  # the caller closes it

    def source(self, value: Any) -> contextlib.AbstractContextManager[Any]:
        """An open stream: the file at a path (closed afterwards), or the stream given."""
        if isinstance(value, (str, os.PathLike)):
            return self._open(value)
        return contextlib.nullcontext(value)

    def batches(self, source: Any) -> Iterator[Any]:
        """Successive ``read(chunk_size)`` results until the end of the stream."""
        while chunk := source.read(self.size or -1):
            yield chunk

    def whole(self, value: Any) -> Any:
        """The whole content (or None for no file)."""
        if value is None:
            return None
        with self.source(value) as stream:
            return stream.read()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
