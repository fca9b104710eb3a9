"""Server frames for the ASGI adapter's direct writes (RFC 6455, section 5.2).

A server's data frame is never masked, and without an extension (permessage-deflate) its
bytes depend on the message alone: the same for every connection. A fan-out hands the same
batch to every connection, one after the other, so the batch is encoded once, into one
buffer, and that buffer is written to every socket (one write each). What ``websockets``
and ``wsproto`` would produce for the same message is byte for byte the same (pinned by the
tests).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ..transport import Message, Outbound, Ping

__all__ = ["batch_bytes", "frame"]

_TEXT = 0x81  # FIN + opcode 1
_BINARY = 0x82  # FIN + opcode 2

_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")

#: The last batch encoded and its bytes (one object, replaced whole).
_last: tuple[tuple[Outbound, ...], bytes] = ((), b"")


def frame(message: Message) -> bytes:
    """The unmasked, uncompressed frame of one message: header, then payload."""
    if isinstance(message, str):
        first = _TEXT
        payload = message.encode()
    else:
        first = _BINARY
        payload = message
    length = len(payload)
    if length < 126:
        return _SHORT.pack(first, length) + payload
    if length < 65536:
        return _MEDIUM.pack(first, 126, length) + payload
    return _LONG.pack(first, 127, length) + payload


def batch_bytes(batch: Sequence[Outbound]) -> bytes:
    """The frames of a batch, in order, as one buffer; ``PING`` items are left out (ASGI
    cannot ping). The last batch is remembered whole, so every connection of a fan-out
    shares one buffer; a batch is compared by the identity of its messages first, which is
    what a fan-out hands each connection."""
    global _last
    key = tuple(batch)
    last, data = _last
    if key != last:
        if len(key) == 1 and not isinstance(key[0], Ping):
            data = frame(key[0])
        else:
            data = b"".join([frame(item) for item in key if not isinstance(item, Ping)])
        _last = (key, data)
    return data
