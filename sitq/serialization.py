"""How callables, arguments and results become bytes in the database.

Payloads made by :class:`CloudpickleSerializer` are code: whoever can write the
database can make a worker run anything. Keep the database file private
(sitq creates it owner-only) and never point workers at a database that
untrusted parties can write.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import cloudpickle

from sitq.errors import ConfigurationError, PayloadRejected, SerializationError

#: Environment variables the default serializer reads (the CLI and apps alike).
SECRET_KEY_ENV = "SITQ_SECRET_KEY"
OLD_SECRET_KEYS_ENV = "SITQ_OLD_SECRET_KEYS"


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


class SignedSerializer:
    """Signs every payload and result with HMAC-SHA256, and refuses to
    deserialize anything whose signature does not verify.

    A worker with a key never unpickles a task written by someone without it:
    an unsigned or tampered payload raises :class:`PayloadRejected` before any
    byte reaches the unpickler, and the task ends FAILED with that error.

    :param secret: the signing key (str or bytes, at least 16 bytes).
    :param old_secrets: keys still accepted when verifying but never used to
        sign, so keys can be rotated: deploy the new key with the old one here,
        and drop the old one once no task or result signed with it remains.
    :param inner: the serializer whose bytes are signed (cloudpickle by default).

    Stored bytes are ``b"SQS1" + mac (32 bytes) + inner bytes``.
    """

    MAGIC = b"SQS1"
    _MAC_SIZE = hashlib.sha256().digest_size

    def __init__(
        self,
        secret: str | bytes,
        old_secrets: Sequence[str | bytes] = (),
        inner: Serializer | None = None,
    ) -> None:
        if isinstance(old_secrets, (str, bytes)):
            raise ConfigurationError("old_secrets must be a list of keys, not a single key")
        keys = [_key_bytes(secret), *(_key_bytes(k) for k in old_secrets)]
        self._sign_key = keys[0]
        self._verify_keys = tuple(dict.fromkeys(keys))
        self.inner: Serializer = inner or CloudpickleSerializer()

    def __repr__(self) -> str:  # never show the keys
        return f"SignedSerializer(keys={len(self._verify_keys)}, inner={self.inner!r})"

    def dumps(self, obj: Any) -> bytes:
        """Serialize ``obj`` with the inner serializer and sign the bytes."""
        body = self.inner.dumps(obj)
        mac = hmac.new(self._sign_key, body, hashlib.sha256).digest()
        return self.MAGIC + mac + body

    def loads(self, data: bytes) -> Any:
        """Verify the signature, then deserialize; raise PayloadRejected otherwise."""
        data = bytes(data)
        prefix = len(self.MAGIC) + self._MAC_SIZE
        if not data.startswith(self.MAGIC) or len(data) < prefix:
            raise PayloadRejected(
                "refused an unsigned payload: this process has a secret key, so it only "
                "deserializes data signed with it (was the task enqueued without "
                f"${SECRET_KEY_ENV}, or written into the database by something else?)"
            )
        mac, body = data[len(self.MAGIC) : prefix], data[prefix:]
        for key in self._verify_keys:
            if hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
                return self.inner.loads(body)
        raise PayloadRejected(
            "refused a payload whose signature does not match any known key: it was "
            "tampered with, or signed with a key this process does not have (add the old "
            f"key to ${OLD_SECRET_KEYS_ENV} while rotating)"
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


def default_serializer() -> Serializer:
    """What TaskQueue and Worker use when given no serializer: a SignedSerializer
    when ``$SITQ_SECRET_KEY`` is set (older keys, comma-separated, in
    ``$SITQ_OLD_SECRET_KEYS``), else a CloudpickleSerializer."""
    secret = os.environ.get(SECRET_KEY_ENV)
    if not secret:
        return CloudpickleSerializer()
    old = [k.strip() for k in os.environ.get(OLD_SECRET_KEYS_ENV, "").split(",") if k.strip()]
    return SignedSerializer(secret, old)


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
    except PayloadRejected as exc:
        raise PayloadRejected(f"{what}: {exc}") from None
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
