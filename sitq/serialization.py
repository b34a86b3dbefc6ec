"""How callables, arguments and results become bytes in the database.

Payloads made by :class:`CloudpickleSerializer` are code: whoever can write the
database can make a worker run anything. Keep the database file private
(sitq creates it owner-only) and never point workers at a database that
untrusted parties can write.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import pickle
import sys
from collections import ChainMap
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import cloudpickle

from sitq.errors import ConfigurationError, PayloadRejected, SerializationError

logger = logging.getLogger("sitq.serialization")

#: Environment variables the default serializer reads (the CLI and apps alike).
SECRET_KEY_ENV = "SITQ_SECRET_KEY"
OLD_SECRET_KEYS_ENV = "SITQ_OLD_SECRET_KEYS"
ACCEPT_UNBOUND_ENV = "SITQ_ACCEPT_UNBOUND_SIGNATURES"

#: What a signature is bound to: a label then the fields of the row it is
#: stored in (see :func:`payload_binding` and :func:`result_binding`).
Binding = tuple[str, ...]


def payload_binding(task_id: str, func_name: str, queue: str) -> Binding:
    """What a task's payload is signed for: its id, function name and queue.

    The queue is bound too: nothing in sitq moves a task between queues, and a
    row moved by an UPDATE would run on workers it was not meant for."""
    return ("payload", task_id, func_name, queue)


def result_binding(task_id: str, func_name: str) -> Binding:
    """What a task's result is signed for: its id and function name."""
    return ("result", task_id, func_name)


@runtime_checkable
class Serializer(Protocol):
    """Turns Python objects into bytes and back. Must be picklable itself.

    A serializer that signs may also have ``dumps_bound(obj, binding)`` and
    ``loads_bound(data, binding)``: sitq then uses those for task payloads and
    results, so a signature is valid only for the row it was made for (see
    :class:`SignedSerializer`). Others are called with ``dumps``/``loads`` only.
    """

    def dumps(self, obj: Any) -> bytes:
        """Serialize ``obj``; raise on objects that cannot be serialized."""
        ...

    def loads(self, data: bytes) -> Any:
        """Rebuild an object from ``dumps`` output."""
        ...


def _refuse_open_file(file: io.TextIOWrapper) -> Any:
    if file in (sys.stdout, sys.stderr):
        return getattr, (sys, "stdout" if file is sys.stdout else "stderr")
    raise pickle.PicklingError(
        f"an open file ({getattr(file, 'name', '?')!r}) cannot be sent to a worker: pass "
        "its path (or its contents) instead"
    )


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, except that an open text file is refused: cloudpickle would
    read the whole file into the payload and hand the task a StringIO copy."""

    dispatch_table = ChainMap(
        {io.TextIOWrapper: _refuse_open_file}, cloudpickle.Pickler.dispatch_table
    )


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
        buffer = io.BytesIO()
        _Pickler(buffer, protocol=self.protocol).dump(obj)
        return buffer.getvalue()

    def loads(self, data: bytes) -> Any:
        """Unpickle ``data``."""
        return pickle.loads(data)


class SignedSerializer:
    """Signs every payload and result with HMAC-SHA256, bound to the row it is
    stored in, and refuses to deserialize anything whose signature does not verify.

    A worker with a key never unpickles a task written by someone without it:
    an unsigned, tampered or moved payload raises :class:`PayloadRejected`
    before any byte reaches the unpickler, and the task ends FAILED with that error.

    The MAC covers a *binding* as well as the bytes: for a task's payload its
    id, function name and queue, for a result the task's id and function name,
    each with its label (payload or result). So a payload copied into another
    task row, moved to another queue, or swapped with a result, and results
    swapped between tasks, are refused too (see :func:`payload_binding`).

    :param secret: the signing key (str or bytes, at least 16 bytes).
    :param old_secrets: keys still accepted when verifying but never used to
        sign, so keys can be rotated: deploy the new key with the old one here,
        and drop the old one once no task or result signed with it remains.
    :param inner: the serializer whose bytes are signed (cloudpickle by default).
    :param accept_unbound: also accept the format signed before bindings existed
        (``SQS1``, whose MAC covers the bytes only, so it can be replayed into
        another row), for an upgrade's transition only;
        ``$SITQ_ACCEPT_UNBOUND_SIGNATURES=1`` sets it.

    Stored bytes are ``b"SQS2" + key id (4 bytes) + mac (32 bytes) + inner bytes``,
    the mac being HMAC-SHA256 of the encoded binding followed by the inner bytes.
    """

    MAGIC = b"SQS2"
    #: The format before bindings: ``b"SQS1" + HMAC(inner bytes) + inner bytes``.
    UNBOUND_MAGIC = b"SQS1"
    _KEY_ID_SIZE = 4
    _MAC_SIZE = hashlib.sha256().digest_size
    _HEADER = len(MAGIC) + _KEY_ID_SIZE + _MAC_SIZE
    _UNBOUND_HEADER = len(UNBOUND_MAGIC) + _MAC_SIZE

    def __init__(
        self,
        secret: str | bytes,
        old_secrets: Sequence[str | bytes] = (),
        inner: Serializer | None = None,
        *,
        accept_unbound: bool = False,
    ) -> None:
        if isinstance(old_secrets, (str, bytes)):
            raise ConfigurationError("old_secrets must be a list of keys, not a single key")
        keys = [_key_bytes(secret), *(_key_bytes(k) for k in old_secrets)]
        self._sign_key = keys[0]
        self._sign_id = _key_id(keys[0])
        self._verify_keys = tuple((_key_id(key), key) for key in dict.fromkeys(keys))
        self.inner: Serializer = inner or CloudpickleSerializer()
        self.accept_unbound = accept_unbound

    def __repr__(self) -> str:  # never show the keys
        return f"SignedSerializer(keys={len(self._verify_keys)}, inner={self.inner!r})"

    def dumps(self, obj: Any) -> bytes:
        """Serialize and sign ``obj`` bound to nothing (a value stored outside a task row)."""
        return self.dumps_bound(obj, ())

    def loads(self, data: bytes) -> Any:
        """Verify bytes signed by :meth:`dumps`, then deserialize; else PayloadRejected."""
        return self.loads_bound(data, ())

    def dumps_bound(self, obj: Any, binding: Binding) -> bytes:
        """Serialize ``obj`` and sign it bound to ``binding`` (see :func:`payload_binding`)."""
        body = self.inner.dumps(obj)
        return self.MAGIC + self._sign_id + _mac(self._sign_key, binding, body) + body

    def loads_bound(self, data: bytes, binding: Binding) -> Any:
        """Deserialize ``data`` if its signature verifies for ``binding``; raise
        PayloadRejected, without deserializing anything, otherwise."""
        data = bytes(data)
        if data.startswith(self.MAGIC) and len(data) >= self._HEADER:
            key_id = data[len(self.MAGIC) : len(self.MAGIC) + self._KEY_ID_SIZE]
            mac, body = data[self._HEADER - self._MAC_SIZE : self._HEADER], data[self._HEADER :]
            keys = [key for known, key in self._verify_keys if known == key_id]
            if not keys:
                raise PayloadRejected(
                    "refused data signed with a key this process does not have: add the old "
                    f"key to ${OLD_SECRET_KEYS_ENV} while rotating (or it was written into "
                    "the database by someone else)"
                )
            for key in keys:
                if hmac.compare_digest(mac, _mac(key, binding, body)):
                    return self.inner.loads(body)
            raise PayloadRejected(
                f"refused: the signature does not match {_describe(binding)}, so these "
                "bytes were signed for another task, queue or use (a payload copied from "
                "another row or moved to another queue, a result swapped or relabelled) or "
                "altered in the database; they were not deserialized. Find out who else "
                f"writes the database, and {_remedy(binding)}"
            )
        if data.startswith(self.UNBOUND_MAGIC) and len(data) >= self._UNBOUND_HEADER:
            return self._loads_unbound(data)
        raise PayloadRejected(
            "refused an unsigned payload: this process has a secret key, so it only "
            "deserializes data signed with it (was the task enqueued without "
            f"${SECRET_KEY_ENV}, or written into the database by something else?)"
        )

    def _loads_unbound(self, data: bytes) -> Any:
        """The 0.1 format: its MAC is not bound to a row, so it is accepted only
        while ``accept_unbound`` is on."""
        if not self.accept_unbound:
            raise PayloadRejected(
                "refused data signed in the old unbound format (SQS1, made before signatures "
                "were bound to their task): it could have been copied from another row. "
                "To run tasks queued before the upgrade, set "
                f"${ACCEPT_UNBOUND_ENV}=1 on workers (accept_unbound=True) until they are "
                "done, then `sitq retry --failed` the ones refused"
            )
        mac, body = (
            data[len(self.UNBOUND_MAGIC) : self._UNBOUND_HEADER],
            data[self._UNBOUND_HEADER :],
        )
        for _, key in self._verify_keys:
            if hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
                _warn_unbound()
                return self.inner.loads(body)
        raise PayloadRejected(
            "refused data in the old unbound format (SQS1) whose signature does not match "
            "any known key: it was tampered with, or signed with a key this process does "
            f"not have (add the old key to ${OLD_SECRET_KEYS_ENV} while rotating)"
        )


def _key_bytes(key: str | bytes) -> bytes:
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, bytes) or len(key) < 16:
        raise ConfigurationError(
            "a secret key must be at least 16 bytes; generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return key


def _key_id(key: bytes) -> bytes:
    """A short public name for a key, so a verifier knows which key signed (and
    can say "not a key I have" rather than "tampered")."""
    return hmac.digest(key, b"sitq key id", "sha256")[: SignedSerializer._KEY_ID_SIZE]


def _encode_binding(binding: Binding) -> bytes:
    """The binding as bytes, unambiguously: each field prefixed with its length."""
    fields = "".join([f"{len(field)}:{field}" for field in binding])
    return f"sitq-v2|{fields}".encode("utf-8", "surrogatepass")


def _mac(key: bytes, binding: Binding, body: bytes) -> bytes:
    """HMAC-SHA256 of the encoded binding followed by ``body`` (not copied)."""
    mac = hmac.new(key, _encode_binding(binding), hashlib.sha256)
    mac.update(body)
    return mac.digest()


def _describe(binding: Binding) -> str:
    if len(binding) == 4 and binding[0] == "payload":
        return f"the payload of task {binding[1]} ({binding[2]}) in queue {binding[3]!r}"
    if len(binding) == 3 and binding[0] == "result":
        return f"the result of task {binding[1]} ({binding[2]})"
    return "this value" if not binding else f"this {binding[0]}"


def _remedy(binding: Binding) -> str:
    if binding[:1] == ("payload",):
        return "enqueue the call again if it is legitimate"
    if binding[:1] == ("result",):
        return "run the task again if you need its result"
    return "write the value again"


_warned_unbound = False


def _warn_unbound() -> None:
    global _warned_unbound
    if not _warned_unbound:
        _warned_unbound = True
        logger.warning(
            "accepted data signed in the old unbound format (SQS1) because $%s is set: "
            "unset it once the tasks and results stored before the upgrade are gone",
            ACCEPT_UNBOUND_ENV,
        )


def binds(serializer: Serializer) -> bool:
    """True if ``serializer`` signs values bound to their row (has ``dumps_bound``)."""
    return callable(getattr(serializer, "dumps_bound", None))


def default_serializer() -> Serializer:
    """What TaskQueue and Worker use when given no serializer: a SignedSerializer
    when ``$SITQ_SECRET_KEY`` is set (older keys, comma-separated, in
    ``$SITQ_OLD_SECRET_KEYS``; ``$SITQ_ACCEPT_UNBOUND_SIGNATURES=1`` accepts the
    old unbound format), else a CloudpickleSerializer."""
    secret = os.environ.get(SECRET_KEY_ENV)
    if not secret:
        return CloudpickleSerializer()
    old = [k.strip() for k in os.environ.get(OLD_SECRET_KEYS_ENV, "").split(",") if k.strip()]
    accept = os.environ.get(ACCEPT_UNBOUND_ENV, "").strip().lower() in ("1", "true", "yes")
    return SignedSerializer(secret, old, accept_unbound=accept)


def bound_dumps(serializer: Serializer, obj: Any, binding: Binding | None) -> bytes:
    """``serializer.dumps(obj)``, signed for ``binding`` when the serializer binds
    (callers pass None when it does not: no per-task work when not signing)."""
    if binding is not None:
        dumps = getattr(serializer, "dumps_bound", None)
        if dumps is not None:
            return dumps(obj, binding)  # type: ignore[no-any-return]
    return serializer.dumps(obj)


def bound_loads(serializer: Serializer, data: bytes, binding: Binding | None) -> Any:
    """``serializer.loads(data)``, verified for ``binding`` when the serializer binds."""
    if binding is not None:
        loads = getattr(serializer, "loads_bound", None)
        if loads is not None:
            return loads(data, binding)
    return serializer.loads(data)


def dumps_checked(
    serializer: Serializer, obj: Any, what: str, binding: Binding | None = None
) -> bytes:
    """``serializer.dumps(obj)`` (bound to ``binding``, see :func:`bound_dumps`),
    turning any failure into a SerializationError naming ``what``."""
    try:
        return bound_dumps(serializer, obj, binding)
    except Exception as exc:
        raise SerializationError(
            f"{what} could not be serialized ({type(exc).__name__}: {exc}); pass only "
            "picklable values (no open files, sockets, locks or connections)"
        ) from exc


class ModuleImportFailed(SerializationError):
    """A payload would not load because a module's own code raised as it was
    imported (see :func:`import_failure`): a matter of where it loads, not of the
    payload, so a worker retries the task as it would an unknown one."""


def import_failure(exc: BaseException) -> str | None:
    """When loading a payload raised ``exc`` inside a module's own top-level code
    (the task function's module, or one its arguments need, failed to import):
    which module, what it raised and where, and what to do. None when no module's
    code ran."""
    innermost = None
    frame = exc.__traceback__
    while frame is not None:
        code, module_globals = frame.tb_frame.f_code, frame.tb_frame.f_globals
        # A module's body runs as "<module>" from its own file (not code exec'd by a reducer).
        if code.co_name == "<module>" and code.co_filename == module_globals.get("__file__"):
            innermost = frame
        frame = frame.tb_next
    if innermost is None:
        return None
    module = innermost.tb_frame.f_globals.get("__name__", "?")
    what = (
        f"importing module {module!r} raised {type(exc).__name__}: {exc} "
        f"({innermost.tb_frame.f_code.co_filename}, line {innermost.tb_lineno})"
    )
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"{what}; install {exc.name.partition('.')[0]!r} where this runs"
    return (
        f"{what}; fix what that module needs when it is imported (its settings, "
        "environment variables, files) where this runs; its traceback shows where"
    )


def loads_checked(
    serializer: Serializer, data: bytes, what: str, binding: Binding | None = None
) -> Any:
    """``serializer.loads(data)`` (verified for ``binding``, see :func:`bound_loads`),
    turning any failure into a SerializationError naming ``what``."""
    try:
        return bound_loads(serializer, data, binding)
    except PayloadRejected as exc:
        raise PayloadRejected(f"{what}: {exc}") from None
    except (Exception, SystemExit) as exc:  # a module may sys.exit() as it is imported
        failed = import_failure(exc)
        if failed is not None:
            raise ModuleImportFailed(f"{what} could not be loaded: {failed}") from exc
        if isinstance(exc, (ModuleNotFoundError, AttributeError)):
            message = (
                f"{what} refers to code this process cannot import ({type(exc).__name__}: "
                f"{exc}); start the worker with `--import MODULE` or from the directory "
                "holding the module"
            )
        else:
            message = (
                f"{what} could not be deserialized ({type(exc).__name__}: {exc}); "
                "the stored payload may be corrupt or written by an incompatible serializer"
            )
        raise SerializationError(message) from exc
