# Type stubs for the part of cloudpickle sitq uses: cloudpickle ships no type
# information and typeshed has no stubs for it. Signatures follow cloudpickle 3.x.
import pickle
from collections import ChainMap
from collections.abc import Callable
from types import ModuleType
from typing import IO, Any

DEFAULT_PROTOCOL: int

class Pickler(pickle.Pickler):
    # A ChainMap of cloudpickle's reducers over copyreg's, as in cloudpickle itself.
    dispatch_table: ChainMap[type, Callable[[Any], Any]]
    def __init__(
        self,
        file: IO[bytes],
        protocol: int | None = None,
        buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None,
    ) -> None: ...

CloudPickler = Pickler

def dump(
    obj: Any,
    file: IO[bytes],
    protocol: int | None = None,
    buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None,
) -> None: ...
def dumps(
    obj: Any,
    protocol: int | None = None,
    buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None,
) -> bytes: ...

load = pickle.load
loads = pickle.loads

def register_pickle_by_value(module: ModuleType) -> None: ...
def unregister_pickle_by_value(module: ModuleType) -> None: ...
def list_registry_pickle_by_value() -> set[str]: ...
