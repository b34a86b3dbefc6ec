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

MAGIC = b"SQH1"
#: Headers are small; anything larger is refused at enqueue and ignored at run.
MAX_HEADER_BYTES = 4096

_PREFIX = len(MAGIC) + 4


def wrap(body: bytes, headers: dict[str, str]) -> bytes:
    """``body`` with ``headers`` framed in front (``body`` unchanged if none)."""
    if not headers:
        return body
    encoded = json.dumps(headers, separators=(",", ":")).encode()
    if len(encoded) > MAX_HEADER_BYTES:
        raise ValueError(f"task headers are {len(encoded)} bytes; at most {MAX_HEADER_BYTES}")
    return MAGIC + len(encoded).to_bytes(4, "big") + encoded + body


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
