"""Signed envelopes: a fleet that shares a secret trusts only what a holder of it published.

Off by default. With ``Backplane(..., secrets=...)`` every envelope goes on the bus in a
signed frame, and every frame is checked before anything in it is read::

    #wsfleet-hmac1 <n> <ms> <mac>[,<mac>]\\n<the encoded envelope>

* ``n`` numbers the frames of one run of the sender (every kind, 1, 2, 3 ...), so a frame
  heard twice is refused the second time ("replayed");
* ``ms`` is the sender's clock (milliseconds since the epoch) when it signed: a frame older
  than ``WINDOW`` (or that far ahead of this node's clock) is refused ("stale"), so is one
  of an origin's run older than the latest run heard from it ("replayed");
* each ``mac`` is HMAC-SHA256, in hex, with one of the sender's keys (one or two) over the
  frame's first line without the macs and the envelope that follows: the header, the
  stamp and the message, whole.

A receiver accepts a frame if one of its macs is the one one of its own keys gives (in
constant time). A sender signs with every key it has, so during a change of key each node
goes from ``[old]`` to ``[new, old]``, then, once all have, to ``[new]``: at each step every
pair of nodes shares a key, in both directions.

A node with signing on refuses a plain envelope ("unsigned"); a node with signing off
refuses a signed frame ("signed, no key here"); a node of a version that knows no signing
refuses it as malformed. So a fleet whose nodes disagree fails loudly, counted on both sides.
No I/O here.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from ..errors import InvalidArgument, WrongType
from .wire import Header

__all__ = [
    "MAX_KEYS",
    "MIN_KEY_BYTES",
    "PREFIX",
    "SIGNATURE_ROOM",
    "WINDOW",
    "Freshness",
    "Rejected",
    "Signing",
    "Stamp",
]

#: What a signed frame starts with; an envelope in the clear starts with ``{``.
PREFIX: Final = b"#wsfleet-hmac1 "
#: A key's shortest length, in bytes (of UTF-8 for a ``str``): 128 bits.
MIN_KEY_BYTES: Final = 16
#: A node signs with its current key and, while a change of key is under way, the previous.
MAX_KEYS: Final = 2
#: How old (or how far ahead of this node's clock) a signed frame may be, in seconds.
WINDOW: Final = 60.0
#: What the signature line adds to an envelope, at most.
SIGNATURE_ROOM: Final = len(PREFIX) + 20 + 1 + 20 + 1 + MAX_KEYS * 65 + 1
_MAC_HEX: Final = 64
_HEAD_MAX: Final = SIGNATURE_ROOM + 16


class Rejected(Exception):
    """A frame refused before its envelope was read; ``reason`` names why, for the counts."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Stamp(NamedTuple):
    """The sender's number and clock, as signed in a frame."""

    n: int
    ms: int


def _key(value: object) -> bytes:
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogatepass")
    if not isinstance(value, bytes):
        raise WrongType(f"a backplane secret must be bytes or str, got {type(value).__name__}")
    if len(value) < MIN_KEY_BYTES:
        raise InvalidArgument(
            f"a backplane secret must be at least {MIN_KEY_BYTES} bytes long, got "
            f"{len(value)} (make one with secrets.token_hex(32))"
        )
    return value


@dataclass(frozen=True, slots=True, init=False, repr=False)
class Signing:
    """The keys of a node: it signs with each, accepts a frame signed with any.

    ``secrets``: one key (``bytes`` or ``str``, at least ``MIN_KEY_BYTES`` bytes), or a
    sequence of one or two, the new one first while a change of key is under way.
    """

    keys: tuple[bytes, ...]

    def __init__(self, secrets: bytes | str | Sequence[bytes | str]) -> None:
        if isinstance(secrets, bytes | str):
            values: list[object] = [secrets]
        elif isinstance(secrets, list | tuple):
            values = list(secrets)
        else:
            raise WrongType(
                "secrets must be a key (bytes or str) or a list of one or two keys, got "
                f"{type(secrets).__name__}"
            )
        if not 1 <= len(values) <= MAX_KEYS:
            raise InvalidArgument(
                f"secrets must hold one key, or two while changing keys; got {len(values)}"
            )
        keys = tuple(_key(value) for value in values)
        if len(set(keys)) != len(keys):
            raise InvalidArgument("secrets holds the same key twice")
        object.__setattr__(self, "keys", keys)

    def __repr__(self) -> str:  # never the keys themselves
        return f"Signing({len(self.keys)} key{'s' if len(self.keys) > 1 else ''})"

    def seal(self, payload: bytes, n: int, now: float) -> bytes:
        """``payload`` (an encoded envelope) in a frame numbered ``n``, signed at ``now``
        (seconds since the epoch) with every key."""
        head = b"%s%d %d" % (PREFIX, n, math.floor(now * 1000))
        macs = b",".join(_mac(key, head, payload) for key in self.keys)
        return b"%s %s\n%s" % (head, macs, payload)

    def open(self, raw: bytes, now: float) -> tuple[bytes, Stamp]:
        """The envelope a frame carries, and its stamp; ``Rejected`` if the frame is not
        signed, not well formed, signed with no key of this node, or out of its window."""
        if not raw.startswith(PREFIX):
            raise Rejected("unsigned")
        end = raw.find(b"\n", 0, _HEAD_MAX)
        fields = raw[len(PREFIX) : end].split(b" ") if end > 0 else []
        if len(fields) != 3 or not all(_digits(f) for f in fields[:2]):
            raise Rejected("bad signature", "no well-formed signature line")
        macs = fields[2].split(b",")
        if not 1 <= len(macs) <= MAX_KEYS or any(len(m) != _MAC_HEX for m in macs):
            raise Rejected("bad signature", "no well-formed signature")
        head = raw[: end - len(fields[2]) - 1]
        payload = raw[end + 1 :]
        good = False
        for key in self.keys:
            expected = _mac(key, head, payload)
            for mac in macs:  # no early exit: the time taken says nothing of which matched
                good |= hmac.compare_digest(expected, mac)
        if not good:
            raise Rejected("bad signature", "signed with no key of this node")
        stamp = Stamp(int(fields[0]), int(fields[1]))
        if abs(stamp.ms / 1000 - now) > WINDOW:
            raise Rejected("stale", f"signed {stamp.ms / 1000 - now:+.0f} s from now")
        return payload, stamp


def _digits(field: bytes) -> bool:
    return 0 < len(field) <= 20 and field.isdigit()


def _mac(key: bytes, head: bytes, payload: bytes) -> bytes:
    mac = hmac.new(key, head, hashlib.sha256)
    mac.update(b"\n")
    mac.update(payload)
    return mac.hexdigest().encode("ascii")


@dataclass(slots=True)
class _Last:
    run: str
    n: int
    ms: int


class Freshness:
    """The latest frame heard from each origin, to refuse one heard before.

    A frame of the origin's current run must have a higher number than the last; a frame of
    another run must be signed no earlier than the last (a node that restarts signs later
    than it did before: an earlier run is a replay). Origins unheard for two windows are
    forgotten (any frame of theirs still around is stale by then), and at most ``limit``
    are kept, the least recently heard going first.
    """

    __slots__ = ("_last", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._last: dict[str, _Last] = {}

    def check(self, header: Header, stamp: Stamp) -> None:
        """Take the frame's stamp, or raise ``Rejected("replayed")``."""
        last = self._last.get(header.node)
        if last is not None:
            if last.run == header.run:
                if stamp.n <= last.n:
                    raise Rejected("replayed", f"frame {stamp.n} of {header.node} again")
            elif stamp.ms < last.ms:
                raise Rejected("replayed", f"an earlier run of {header.node}")
            del self._last[header.node]  # heard last: at the end of the order
        elif len(self._last) >= self.limit:
            del self._last[next(iter(self._last))]
        self._last[header.node] = _Last(header.run, stamp.n, stamp.ms)

    def forget(self, now: float) -> None:
        """Forget the origins whose latest frame is older than two windows."""
        before = (now - 2 * WINDOW) * 1000
        for node in [n for n, last in self._last.items() if last.ms < before]:
            del self._last[node]

    def __len__(self) -> int:
        return len(self._last)
