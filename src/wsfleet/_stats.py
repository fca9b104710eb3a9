"""The numbers ``manager.stats()`` reports: nothing is dropped without being counted here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["FleetStats"]


@dataclass(frozen=True, slots=True)
class FleetStats:
    """A snapshot of one manager's fleet."""

    connections: int
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

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["states"] = dict(self.states)
        data["drops"] = dict(self.drops)
        return data
