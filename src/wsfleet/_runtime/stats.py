"""The numbers ``manager.stats()`` reports: nothing is dropped without being counted here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..policies.history import Position

__all__ = ["Delivery", "FleetStats"]


class Delivery(int):
    """What a fan-out returns: how many local connections it was for (the int), whether it
    was also published for the other nodes of the fleet (``published``), and, for a group
    that keeps history, where the message stands in it (``position``; else ``None``).

    Each connection counts once, whether it queued the message or its full queue counted
    the message dropped (``OverflowPolicy``): what fan-outs return adds up to
    ``stats().sent_messages`` + the drops + ``queued_messages``."""

    published: bool
    position: Position | None

    def __new__(
        cls, local: int, published: bool = False, position: Position | None = None
    ) -> Delivery:
        self = super().__new__(cls, local)
        self.published = published
        self.position = position
        return self

    @property
    def local(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        where = "" if self.position is None else f", position={self.position}"
        return f"Delivery(local={int(self)}, published={self.published}{where})"

    def __str__(self) -> str:
        return str(int(self))


@dataclass(frozen=True, slots=True)
class FleetStats:
    """A snapshot of one manager's fleet."""

    connections: int
    """Registered connections: the active ones and the held ones (see ``held``)."""
    held: int
    """Connections kept for a retry or a resume (ERROR or RECONNECTING); counted above."""
    identifiers: int
    groups: int
    states: Mapping[str, int]
    """Connections per state, by the state's name (every state present, zeros included)."""
    queued_messages: int
    queued_bytes: int
    sent_messages: int
    """Messages handed to transports since the manager started."""
    drops: Mapping[str, int]
    """Messages discarded since the manager started, by reason."""
    callback_errors: int
    callback_timeouts: int
    pings_sent: int
    heartbeat_timeouts: int
    producer_waits: int = 0
    """Fan-out calls that waited because the fleet was behind (``BackpressurePolicy``)."""
    producer_wait_seconds: float = 0.0
    """The seconds those calls waited, in all."""
    received_messages: int = 0
    """Messages the sessions received since the manager started."""
    inbound_drops: Mapping[str, int] = field(default_factory=dict)
    """Received messages refused before the application saw them, by reason ("rate limit")."""
    inbound_waits: int = 0
    """Received messages held back until their sender was within its rate limit (``WAIT``)."""
    node_id: str | None = None
    backplane_state: str | None = None
    """The link to the other nodes: CONNECTED, ERROR, RECONNECTING ...; ``None`` if alone."""
    backplane: Mapping[str, int] | None = None
    """Published, received, malformed, dropped (by reason), link changes, expired nodes."""
    history: Mapping[str, int] = field(default_factory=dict)
    """Groups' history: messages ``replayed`` by recoveries, recoveries ``refused``
    (``RecoveryImpossible``), messages this node missed live and ``filled`` from the store,
    or ``lost`` (the store no longer held them)."""

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["states"] = dict(self.states)
        data["drops"] = dict(self.drops)
        data["dropped"] = self.dropped
        data["inbound_drops"] = dict(self.inbound_drops)
        data["history"] = dict(self.history)
        if self.backplane is not None:
            data["backplane"] = dict(self.backplane)
        return data
