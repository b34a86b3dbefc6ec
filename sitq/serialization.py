"""How callables, arguments and results become bytes in the database.

Payloads made by :class:`CloudpickleSerializer` are code: whoever can write the
database can make a worker run anything. Keep the database file private
(sitq creates it owner-only) and never point workers at a database that
untrusted parties can write.
"""

from __future__ import annotations

import pickle
from typing import Any, Protocol, runtime_checkable

import cloudpickle

from sitq.errors import SerializationError


@runtime_checkable
class Serializer(Protocol):
    """Turns Python objects into bytes and back. Must be picklable itself."""

    def dumps(self, obj: Any) -> bytes:
        """Serialize ``obj``; raise on objects that cannot be serialized."""
        ...

    def loads(self, data: bytes) -> Any:
        """Rebuild an object from ``dumps`` output."""
        ...


class CloudpickleSerializer:
    """The default serializer: cloudpickle, so lambdas and closures travel too.

    Functions importable by module are sent by reference (the worker imports the
    module); functions defined in ``__main__`` or interactively are sent by value.
    Calls that hold only data and importable functions (the usual case) are
    written by the standard C pickler, which then gives the same bytes as
    cloudpickle, several times faster; anything else goes through cloudpickle.
    """

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        self.protocol = protocol

    def dumps(self, obj: Any) -> bytes:
        """Serialize ``obj``."""
        if not cloudpickle.list_registry_pickle_by_value():
            try:
                data = pickle.dumps(obj, protocol=self.protocol)
            except Exception:
                pass  # lambdas, local functions, ...: cloudpickle's job
            else:
                # The C pickler refers to __main__ code by name, which a worker
                # cannot import; cloudpickle sends such code by value instead.
                if b"__main__" not in data:
                    return data
        return cloudpickle.dumps(obj, protocol=self.protocol)

    def loads(self, data: bytes) -> Any:
        """Unpickle ``data``."""
        return pickle.loads(data)


def dumps_checked(serializer: Serializer, obj: Any, what: str) -> bytes:
    """``serializer.dumps(obj)``, turning any failure into a SerializationError naming ``what``."""
    try:
        return serializer.dumps(obj)
    except Exception as exc:
        raise SerializationError(
            f"{what} could not be serialized ({type(exc).__name__}: {exc}); pass only "
            "picklable values (no open files, sockets, locks or connections)"
        ) from exc


def loads_checked(serializer: Serializer, data: bytes, what: str) -> Any:
    """``serializer.loads(data)``, turning any failure into a SerializationError naming ``what``."""
    try:
        return serializer.loads(data)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise SerializationError(
            f"{what} refers to code this process cannot import ({type(exc).__name__}: {exc}); "
            "start the worker with `--import MODULE` or from the directory holding the module"
        ) from exc
    except Exception as exc:
        raise SerializationError(
            f"{what} could not be deserialized ({type(exc).__name__}: {exc}); "
            "the stored payload may be corrupt or written by an incompatible serializer"
        ) from exc
