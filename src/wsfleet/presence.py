"""What presence is made of: the metadata an identity carries, and the events about it.

An application attaches metadata to an identity when it registers a socket
(``register(ws, "alice", meta={"name": "Alice"})``); the manager answers
``await presence(group)`` with it and puts it in every ``PresenceEvent``. It travels to the
other nodes of the fleet (on the backplane and in the store), so it is bounded and plain:
a JSON object of at most ``MAX_META_BYTES`` once encoded. The same check holds for what
the application passes and for what another node says, here in one place.

No I/O and no event loop: the backplane's wire format uses it too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

from .errors import InvalidMeta, WrongType

__all__ = ["MAX_META_BYTES", "Meta", "PresenceEvent", "PresenceKind", "check_meta", "meta_size"]

#: The most bytes an identity's metadata may take as compact JSON. Every node keeps it for
#: every identity of the fleet and every announcement carries it: a profile's name, avatar
#: and status fit; a document does not.
MAX_META_BYTES: Final = 2048

PresenceKind: TypeAlias = Literal["online", "offline", "join", "leave"]
#: What ``register`` and ``session`` take as metadata (``None``: the identity keeps its own).
Meta: TypeAlias = Mapping[str, Any] | None


def meta_size(meta: Mapping[str, Any]) -> int:
    """Bytes ``meta`` takes as compact UTF-8 JSON (what the backplane carries)."""
    encoded = json.dumps(meta, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return len(encoded.encode("utf-8"))


def check_meta(meta: object) -> dict[str, Any]:
    """A private copy of ``meta`` if it is a small JSON object; raises otherwise.

    ``WrongType`` if it is not a mapping, ``InvalidMeta`` if it cannot be JSON (a key that
    is not ``str``, a value JSON has no form for, NaN, text that is not valid Unicode) or is
    over ``MAX_META_BYTES``. The copy is what the fleet keeps: changing the caller's mapping
    afterwards changes nothing, and what every node holds is what JSON can carry.
    """
    if not isinstance(meta, Mapping):
        raise WrongType(f"meta must be a mapping (a JSON object), got {type(meta).__name__}")
    if not all(isinstance(key, str) for key in meta):
        raise InvalidMeta("meta's keys must be str (JSON object keys)")
    try:
        encoded = json.dumps(meta, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        size = len(encoded.encode("utf-8"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidMeta(f"meta must be JSON-encodable: {exc}") from None
    if size > MAX_META_BYTES:
        raise InvalidMeta(f"meta takes {size} bytes as JSON, over the limit of {MAX_META_BYTES}")
    copy: dict[str, Any] = json.loads(encoded)
    return copy


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """One change of an identity's presence in the fleet (``manager.on_presence``).

    ``kind``: ``"online"`` (its first socket anywhere in the fleet), ``"offline"`` (its last
    socket anywhere is gone; a session held for a resume still counts as a socket),
    ``"join"`` / ``"leave"`` (it entered or left ``group``; an identity going offline
    leaves each of its groups first). ``group`` is ``None`` for online and offline.
    ``meta`` is the identity's metadata at that moment (a copy, the callback's to keep).
    ``node`` is the node the change happened on (``"local"`` without a backplane): where
    the first socket registered, where the last one went, or the node whose lease lapsed.
    """

    kind: PresenceKind
    identifier: str
    group: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False)
    node: str = "local"
