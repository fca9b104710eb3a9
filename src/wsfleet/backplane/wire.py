"""What nodes say to each other on the backplane: versioned JSON, never pickle.

Every envelope is one JSON object::

    {"v": 2, "ns": "wsfleet", "node": "<id>", "run": "<id>", "seq": 17, "k": "<kind>", ...}

``run`` names one run of the origin node (a fresh random value each time a backplane starts),
so that a node id reused by a new process starts a new count. ``seq`` is the origin's count of
``send`` envelopes in this run, up to and including this one: a ``send`` carries its own
number (1, 2, 3 ...), any other kind the number of the last ``send`` published before it. A
receiver that sees the count jump knows how many sends it missed (see ``accounting``).

Kinds and their fields:

* ``send``: a fan-out to carry out on every other node. ``to`` is ``"all"``, ``"one"``,
  ``"many"`` or ``"group"``; ``target`` the identifier, identifiers or group (absent for
  ``all``); ``exclude`` identifiers to skip; the message is ``text`` (str) or ``b64`` (bytes).
* ``join`` / ``leave``: ``id`` joined or left ``group`` on the origin node.
* ``online`` / ``offline``: ``id`` got its first socket on the origin node, or lost its last.
  An ``online`` may carry ``meta``, the identity's presence metadata there (a JSON object of
  at most ``MAX_META_BYTES``); it is sent again, with the new ``meta``, when that changes.
  Nodes that predate it ignore the field.
* ``kick``: close every socket of ``id`` with ``code`` and ``reason``.
* ``hello``: the origin node (re)joined the bus; peers reload its state from the store.
* ``tally``: nothing but the header: the origin's count of sends, announced after its last
  send so that a receiver that missed that one learns of it.

A message from another namespace, of another version, that does not parse, or that carries
text no UTF-8 encoder accepts (a lone surrogate, which JSON's ``\\ud800`` escape can spell) is
refused with ``MalformedEnvelope`` (``wsfleet.errors``): the subscriber logs it, counts it and
goes on. When its header was sound, the error carries it, so the receiver can count the send
it replaced.

With signing on (``Backplane(secrets=...)``), each encoded envelope travels inside a signed
frame (``signing``), checked before this module reads it; the envelope itself is the same.

No I/O and no event loop here: a test imports this module alone and proves it.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple, TypeAlias, cast

from ..closecodes import sendable
from ..errors import InvalidArgument, MalformedEnvelope, WrongType
from ..names import check_name
from ..presence import check_meta

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "ENVELOPE_ROOM",
    "VERSION",
    "Envelope",
    "Header",
    "Kind",
    "SendTo",
    "check_body",
    "check_size",
    "decode",
    "encode",
    "encoded_size",
    "read_header",
    "send_data",
]

#: Version 2 added ``run`` and made ``seq`` the count of sends (version 1 numbered every
#: envelope, and nobody read it): a node of either refuses the other's envelopes outright.
VERSION: Final = 2

Kind: TypeAlias = Literal["send", "join", "leave", "online", "offline", "kick", "hello", "tally"]
_KINDS: Final = frozenset(("send", "join", "leave", "online", "offline", "kick", "hello", "tally"))
#: Whom a ``send`` is for, as the sender's fan-out named them.
SendTo: TypeAlias = Literal["all", "one", "many", "group"]
_SEND_TO: Final = frozenset(("all", "one", "many", "group"))
_HEADER_FIELDS: Final = ("v", "ns", "node", "run", "seq", "k")

#: The default bound on one envelope, in bytes. Redis disconnects a pub/sub subscriber whose
#: output buffer passes 32 MiB, or stays above 8 MiB for a minute (its default
#: ``client-output-buffer-limit pubsub``); one message far below both leaves room for a burst.
#: A message of the manager's default limit (1 MiB) fits whether bytes (base64: 1.4 MiB) or
#: text (JSON escapes make it larger only for control characters, six bytes each).
DEFAULT_MAX_MESSAGE_SIZE: Final = 4 * 1024 * 1024

#: What ``Backplane.check_message`` keeps, within the bound, for the rest of the envelope: its
#: header and the fan-out's targets. An envelope still too large when built (thousands of
#: targets) is dropped and counted by the sender ("too large for the backplane").
ENVELOPE_ROOM: Final = 4096


class Header(NamedTuple):
    """Who sent an envelope, in which run, at which count of its sends (a tuple: one is
    made for every envelope received)."""

    kind: Kind
    node: str
    run: str
    seq: int


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: Kind
    node: str
    run: str
    seq: int
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def header(self) -> Header:
        return Header(self.kind, self.node, self.run, self.seq)

    @property
    def message(self) -> str | bytes:
        """The message a ``send`` carries."""
        if "text" in self.data:
            text: str = self.data["text"]
            return text
        return base64.b64decode(self.data["b64"])


def encode(namespace: str, envelope: Envelope) -> bytes:
    """The envelope as UTF-8 JSON; ``UnicodeEncodeError`` (a ``ValueError``) for text with a
    lone surrogate, which no node could read back as text (the manager refuses such text
    before it gets here; identifiers are not checked as closely)."""
    body = {"v": VERSION, "ns": namespace, "node": envelope.node, "run": envelope.run}
    body["seq"] = envelope.seq
    body["k"] = envelope.kind
    body.update(envelope.data)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encoded_size(message: str | bytes) -> int:
    """Bytes the message takes inside an envelope: JSON-escaped text, or base64.

    Text is measured as JSON writes it (a control character takes six bytes); lone
    surrogates are measured as if they could be written, refusing them is not this
    function's business.
    """
    if isinstance(message, bytes):
        return (len(message) + 2) // 3 * 4
    escaped = json.dumps(message, ensure_ascii=False)
    return len(escaped.encode("utf-8", "surrogatepass")) - 2  # without the quotes


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


def _utf8(value: str) -> bool:
    """Whether ``value`` can be written as UTF-8 (it holds no lone surrogate)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _str(body: dict[str, Any], key: str, header: Header | None = None) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedEnvelope(f"field {key!r} must be a non-empty string", header)
    if not _utf8(value):
        raise MalformedEnvelope(f"field {key!r} is not valid Unicode", header)
    return value


def _name(body: dict[str, Any], key: str, header: Header) -> str:
    """An identifier or group name, held to the rules every name is (``check_name``): one a
    node would refuse from its own clients is refused from the bus too."""
    value = body.get(key)
    try:
        return check_name(f"field {key!r}", value)
    except (InvalidArgument, WrongType) as exc:
        raise MalformedEnvelope(str(exc), header) from None


def read_header(namespace: str, raw: bytes | str) -> tuple[Header, dict[str, Any]]:
    """Parse an envelope and check its header: the header, and the body to hand to
    ``check_body``. A subscriber reads its own envelopes back: it stops here for those."""
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
    run = _str(body, "run")
    seq = body.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise MalformedEnvelope("field 'seq' must be an integer >= 0")
    return Header(cast(Kind, kind), node, run, seq), body


def decode(namespace: str, raw: bytes | str, max_size: int | None = None) -> Envelope:
    """Parse and check an envelope of ``namespace``; ``MalformedEnvelope`` otherwise.

    ``max_size``: the most bytes an envelope may take (the backplane's bound); a larger one
    is refused, as a node that keeps to the bound never sends one.
    """
    header, body = read_header(namespace, raw)
    if max_size is not None:
        check_size(header, raw, max_size)
    return check_body(header, body)


def check_size(header: Header, raw: bytes | str, max_size: int) -> None:
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_size:
        raise MalformedEnvelope(f"{size} bytes, over the bound of {max_size}", header)


def check_body(header: Header, body: dict[str, Any]) -> Envelope:
    """The envelope, once its body (what ``read_header`` left) holds what its kind needs."""
    for key in _HEADER_FIELDS:
        del body[key]
    data = body
    kind = header.kind
    if kind == "send":
        _check_send(data, header)
    elif kind in ("join", "leave"):
        _name(data, "id", header)
        _name(data, "group", header)
    elif kind in ("online", "offline"):
        _name(data, "id", header)
        if "meta" in data:
            try:
                data["meta"] = check_meta(data["meta"])
            except (InvalidArgument, WrongType) as exc:  # forged: no node sends it
                raise MalformedEnvelope(f"field 'meta': {exc}", header) from None
    elif kind == "kick":
        _name(data, "id", header)
        refusal = sendable(data.get("code"), data.get("reason", ""))
        if refusal is not None:  # a close the sockets could not be given
            raise MalformedEnvelope(refusal, header)
    return Envelope(kind, header.node, header.run, header.seq, data)


def _check_send(data: dict[str, Any], header: Header) -> None:
    if not isinstance(data.get("to"), str) or data["to"] not in _SEND_TO:
        raise MalformedEnvelope(f"unknown send target kind {data.get('to')!r}", header)
    if ("text" in data) == ("b64" in data):
        raise MalformedEnvelope("a send carries exactly one of 'text' and 'b64'", header)
    if "text" in data:
        if not isinstance(data["text"], str):
            raise MalformedEnvelope("field 'text' must be a string", header)
        if not _utf8(data["text"]):
            # A frame of such text cannot be built: every socket it went to would fail.
            raise MalformedEnvelope("field 'text' is not valid Unicode", header)
    if "b64" in data:
        try:
            base64.b64decode(data["b64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise MalformedEnvelope("field 'b64' is not base64", header) from None
    target: Any = data.get("target")
    if data["to"] in ("one", "group") and not isinstance(target, str):
        raise MalformedEnvelope("field 'target' must be a string", header)
    if data["to"] == "many" and not (
        isinstance(target, list) and all(isinstance(t, str) for t in target)
    ):
        raise MalformedEnvelope("field 'target' must be a list of strings", header)
    exclude = data.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(x, str) for x in exclude):
        raise MalformedEnvelope("field 'exclude' must be a list of strings", header)
    if isinstance(target, str):  # an "all" has no target; the others' types are checked
        valid = _utf8(target)
    else:
        valid = data["to"] != "many" or all(map(_utf8, target))
    if not valid:
        raise MalformedEnvelope("field 'target' is not valid Unicode", header)
    if exclude and not all(map(_utf8, exclude)):
        raise MalformedEnvelope("field 'exclude' is not valid Unicode", header)
