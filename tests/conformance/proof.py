"""After each fault: proof that it harmed no one else and that the server goes on serving."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

from wsfleet import ConnectionState

from .peers import client, join, receive_json, send_json
from .relay import Relay

ROOM = "lobby"

Snapshot = dict[str, tuple[int, ConnectionState | None, datetime]]

_newcomers = itertools.count()


def snapshot(relay: Relay, names: list[str]) -> Snapshot:
    """Each named client's socket (by identity), state and time of entering that state."""
    manager = relay.manager
    taken: Snapshot = {}
    for who in names:
        sockets = manager.sockets_of(who)
        assert len(sockets) == 1, f"{who} has {len(sockets)} sockets"
        taken[who] = (
            id(sockets[0]),
            manager.get_connection_state(sockets[0]),
            manager.get_state_timestamp(sockets[0]),
        )
    return taken


async def untouched(relay: Relay, before: Snapshot, clients: dict[str, Any]) -> None:
    """The bystanders kept their sockets and states, and a message still reaches them all.

    Each bystander must be in ``ROOM`` and have read everything sent to it so far.
    """
    after = snapshot(relay, list(before))
    assert after == before
    speaker, *_ = clients
    await send_json(clients[speaker], type="say", room=ROOM, text="still here")
    expected = {"type": "said", "room": ROOM, "from": speaker, "text": "still here"}
    for who, ws in clients.items():
        assert await receive_json(ws) == expected, who


async def serves_a_newcomer(relay: Relay, url: str) -> None:
    """A new client can connect, join and talk: the server is still serving."""
    name = f"newcomer-{next(_newcomers)}"
    async with client(f"{url}?id={name}") as ws:
        await join(ws, "newcomers")
        await send_json(ws, type="say", room="newcomers", text="hello")
        said = {"type": "said", "room": "newcomers", "from": name, "text": "hello"}
        assert await receive_json(ws) == said
        assert relay.state_of(name) is ConnectionState.CONNECTED
