"""What nodes say to each other on the backplane: versioned JSON, never pickle.

Every envelope is one JSON object::

    {"v": 1, "ns": "wsfleet", "node": "<origin node id>", "seq": 17, "k": "<kind>", ...}

Kinds and their fields:

* ``send``: a fan-out to carry out on every other node. ``to`` is ``"all"``, ``"one"``,
  ``"many"`` or ``"group"``; ``target`` the identifier, identifiers or group (absent for
  ``all``); ``exclude`` identifiers to skip; the message is ``text`` (str) or ``b64`` (bytes).
* ``join`` / ``leave``: ``id`` joined or left ``group`` on the origin node.
* ``online`` / ``offline``: ``id`` got its first socket on the origin node, or lost its last.
* ``kick``: close every socket of ``id`` with ``code`` and ``reason``.
* ``hello``: the origin node (re)joined the bus; peers reload its state from the store.

A message from another namespace, of another version, or that does not parse is refused with
``MalformedEnvelope``: the subscriber logs it, counts it and goes on.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias, cast

from .errors import WsfleetError

__all__ = ["VERSION", "Envelope", "Kind", "MalformedEnvelope", "decode", "encode"]

VERSION: Final = 1

Kind: TypeAlias = Literal["send", "join", "leave", "online", "offline", "kick", "hello"]
_KINDS: Final = frozenset(("send", "join", "leave", "online", "offline", "kick", "hello"))
_SEND_TO: Final = frozenset(("all", "one", "many", "group"))


class MalformedEnvelope(WsfleetError, ValueError):
    """Bytes on the backplane channel that are not a wsfleet envelope of this namespace."""


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: Kind
    node: str
    seq: int
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def message(self) -> str | bytes:
        """The message a ``send`` carries."""
        if "text" in self.data:
            text: str = self.data["text"]
            return text
        return base64.b64decode(self.data["b64"])


def encode(namespace: str, envelope: Envelope) -> bytes:
    body = {"v": VERSION, "ns": namespace, "node": envelope.node, "seq": envelope.seq}
    body["k"] = envelope.kind
    body.update(envelope.data)
    # "surrogatepass": the manager accepts text with lone surrogates, and json.loads reads
    # bytes back with the same error handler, so such text survives the round trip.
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


def send_data(
    to: str, target: str | list[str] | None, message: str | bytes, exclude: list[str]
) -> dict[str, Any]:
    """The fields of a ``send`` envelope."""
    data: dict[str, Any] = {"to": to}
    if target is not None:
        data["target"] = target
    if exclude:
        data["exclude"] = exclude
    if isinstance(message, str):
        data["text"] = message
    else:
        data["b64"] = base64.b64encode(message).decode("ascii")
    return data


def _str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedEnvelope(f"field {key!r} must be a non-empty string")
    return value


def decode(namespace: str, raw: bytes | str) -> Envelope:
    """Parse and check an envelope of ``namespace``; ``MalformedEnvelope`` otherwise."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise MalformedEnvelope(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedEnvelope("not a JSON object")
    if body.get("ns") != namespace:
        raise MalformedEnvelope(f"foreign namespace {body.get('ns')!r}")
    version = body.get("v")
    if type(version) is not int or version != VERSION:  # not True, not 1.0
        raise MalformedEnvelope(f"unsupported version {version!r}")
    kind = body.get("k")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise MalformedEnvelope(f"unknown kind {kind!r}")
    node = _str(body, "node")
    seq = body.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise MalformedEnvelope("field 'seq' must be an integer")
    data = {k: v for k, v in body.items() if k not in ("v", "ns", "node", "seq", "k")}
    if kind == "send":
        if not isinstance(data.get("to"), str) or data["to"] not in _SEND_TO:
            raise MalformedEnvelope(f"unknown send target kind {data.get('to')!r}")
        if ("text" in data) == ("b64" in data):
            raise MalformedEnvelope("a send carries exactly one of 'text' and 'b64'")
        if "text" in data and not isinstance(data["text"], str):
            raise MalformedEnvelope("field 'text' must be a string")
        if "b64" in data:
            try:
                base64.b64decode(data["b64"], validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise MalformedEnvelope("field 'b64' is not base64") from None
        target = data.get("target")
        if data["to"] in ("one", "group") and not isinstance(target, str):
            raise MalformedEnvelope("field 'target' must be a string")
        if data["to"] == "many" and not (
            isinstance(target, list) and all(isinstance(t, str) for t in target)
        ):
            raise MalformedEnvelope("field 'target' must be a list of strings")
        exclude = data.get("exclude", [])
        if not isinstance(exclude, list) or not all(isinstance(x, str) for x in exclude):
            raise MalformedEnvelope("field 'exclude' must be a list of strings")
    elif kind in ("join", "leave"):
        _str(data, "id")
        _str(data, "group")
    elif kind in ("online", "offline"):
        _str(data, "id")
    elif kind == "kick":
        _str(data, "id")
        if isinstance(data.get("code"), bool) or not isinstance(data.get("code"), int):
            raise MalformedEnvelope("field 'code' must be an integer")
        if not isinstance(data.get("reason", ""), str):
            raise MalformedEnvelope("field 'reason' must be a string")
    return Envelope(cast(Kind, kind), node, seq, data)
