"""``manager.stats()``: one snapshot of what the runtime's parts count."""

from __future__ import annotations

from typing import Any

from ..fsm.states import ConnectionState
from .fleet import Fleet
from .history import History
from .stats import FleetStats

__all__ = ["snapshot"]

E = ConnectionState.ERROR
R = ConnectionState.RECONNECTING


def snapshot(fleet: Fleet, history: History, backplane: Any) -> FleetStats:
    """The fleet's numbers now; ``backplane`` (a ``Backplane`` or ``None``) adds its own."""
    registry = fleet.registry
    outbox = fleet.outbox
    callbacks = fleet.callbacks
    drops = dict(outbox.drops)
    presence = fleet.presence.callbacks
    if callbacks.dropped + presence.dropped:
        drops["callback backlog"] = callbacks.dropped + presence.dropped
    if backplane is not None:
        for key, value in backplane.stats.items():
            if key.startswith("dropped: ") and value:
                drops[key.replace("dropped: ", "backplane: ", 1)] = value
    return FleetStats(
        connections=len(registry),
        held=len(registry.by_state[E]) + len(registry.by_state[R]),
        identifiers=len(registry.by_identifier),
        groups=len(registry.groups),
        states={state.name: len(conns) for state, conns in registry.by_state.items()},
        queued_messages=outbox.queued_messages,
        queued_bytes=outbox.queued_bytes,
        sent_messages=outbox.sent_messages,
        drops=drops,
        callback_errors=callbacks.errors + presence.errors,
        callback_timeouts=callbacks.timeouts + presence.timeouts,
        pings_sent=outbox.pings_sent,
        heartbeat_timeouts=fleet.timers.heartbeat_timeouts,
        producer_waits=fleet.producer_waits,
        producer_wait_seconds=fleet.producer_wait_seconds,
        received_messages=fleet.inbound.received_messages,
        inbound_drops=dict(fleet.inbound.drops),
        inbound_waits=fleet.inbound.waits,
        node_id=None if backplane is None else backplane.node_id,
        backplane_state=None if backplane is None else backplane.state.name,
        backplane=None if backplane is None else dict(backplane.stats),
        history=dict(history.counts()),
    )
