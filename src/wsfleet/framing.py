"""A ready framing for groups that keep history: each message with its position, in JSON.

    manager = ConnectionManager(history=HistoryPolicy(), frame=json_frame)

A socket is then sent ``{"position": "<epoch>:<offset>", "data": "<the message>"}`` (a bytes
message goes as ``"bytes"``, in base64), and a client keeps the last ``position`` it read
to send it back when it reconnects (``manager.recover(..., since=position)``).
``unframe`` reads a frame back, for clients written in Python (``manager.connect``).
Any other ``frame(message, position) -> str | bytes`` will do; this one needs nothing but
the standard library.
"""

from __future__ import annotations

import base64
import binascii
import json

from .errors import InvalidArgument
from .policies.history import Position

__all__ = ["json_frame", "unframe"]


def json_frame(message: str | bytes, position: Position) -> str:
    """``message`` with its ``position``, as one JSON object."""
    if isinstance(message, str):
        return json.dumps({"position": str(position), "data": message})
    encoded = base64.b64encode(bytes(message)).decode()
    return json.dumps({"position": str(position), "bytes": encoded})


def unframe(frame: str | bytes) -> tuple[Position, str | bytes]:
    """The position and the message of a ``json_frame``; ``InvalidArgument`` otherwise."""
    try:
        data = json.loads(frame)
        position = Position.parse(data["position"])
        if "data" in data and isinstance(data["data"], str):
            return position, data["data"]
        return position, base64.b64decode(data["bytes"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise InvalidArgument(f"not a json_frame: {exc}") from None
