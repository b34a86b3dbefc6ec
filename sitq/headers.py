"""Task headers: a little string metadata that travels in front of a payload.

Headers carry what a worker needs to know about a task before (and without)
deserializing it, today the W3C trace context of the enqueue. They are framed
in front of the serialized call, so the backend stores one opaque payload and
knows nothing about them::

    MAGIC | length (4 bytes, big-endian) | JSON object of str -> str | body

A payload without the magic prefix has no headers (pickle streams start with
``0x80``, so there is no ambiguity). Headers are never executed and are parsed
strictly; malformed ones are ignored, so they cannot make a task fail.
"""

from __future__ import annotations

import json
import logging

logger = logging.getLogger("sitq.headers")

MAGIC = b"SQH1"
#: Headers are small; anything larger is refused at enqueue and ignored at run.
MAX_HEADER_BYTES = 4096

_PREFIX = len(MAGIC) + 4


def encode(headers: dict[str, str]) -> bytes | None:
    """The frame prefix for ``headers``, or None when there are none to send.

    Oversized headers (W3C baggage may legally reach 8 KB) are dropped with a
    warning rather than failing the enqueue: they only link traces.
    """
    if not headers:
        return None
    encoded = json.dumps(headers, separators=(",", ":")).encode()
    if len(encoded) > MAX_HEADER_BYTES:
        logger.warning(
            "task headers are %d bytes (at most %d): sent without trace context",
            len(encoded),
            MAX_HEADER_BYTES,
        )
        return None
    return MAGIC + len(encoded).to_bytes(4, "big") + encoded


def unwrap(payload: bytes) -> tuple[dict[str, str], bytes]:
    """Split a stored payload into its headers (maybe empty) and the serialized call."""
    if not payload.startswith(MAGIC):
        return {}, payload
    size = int.from_bytes(payload[len(MAGIC) : _PREFIX], "big")
    body = payload[_PREFIX + size :]
    if size > MAX_HEADER_BYTES:
        return {}, body
    try:
        headers = json.loads(payload[_PREFIX : _PREFIX + size])
    except ValueError:
        return {}, body
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        return {}, body
    return headers, body
