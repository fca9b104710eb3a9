"""The server application every adapter test runs: sessions relaying to one group."""

from __future__ import annotations

from typing import Any

import anyio

from wsfleet import ConnectionManager, ConnectionState


class App:
    """Holds each socket in a wsfleet session and relays what it says to the group "room"."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        self.changes: list[tuple[str, ConnectionState | None, ConnectionState, str | None]] = []
        #: identifier -> the close code that ended its session
        self.ended: dict[str, int | None] = {}
        manager.on_state_change(self.record)

    def record(self, change: Any) -> None:
        self.changes.append((change.connection.identifier, change.old, change.new, change.reason))

    async def handler(self, ws: Any, identifier: str) -> None:
        async with self.manager.session(ws, identifier) as session:
            self.manager.add_to_group(identifier, "room")
            async for message in session:
                if isinstance(message, bytes):
                    await self.manager.send_to_group("room", identifier.encode() + b": " + message)
                else:
                    await self.manager.send_to_group("room", f"{identifier}: {message}")
            self.ended[identifier] = session.close_code

    async def wait_for(self, who: str, state: ConnectionState, seconds: float = 5.0) -> str | None:
        """The reason of ``who``'s first change into ``state``, waiting for it if need be."""
        with anyio.fail_after(seconds):
            while True:
                for name, _, new, reason in self.changes:
                    if name == who and new is state:
                        return reason
                await anyio.sleep(0.01)

    async def wait_ended(self, who: str, seconds: float = 5.0) -> int | None:
        with anyio.fail_after(seconds):
            while who not in self.ended:
                await anyio.sleep(0.01)
        return self.ended[who]

    def state_of(self, who: str) -> ConnectionState | None:
        sockets = self.manager.sockets_of(who)
        return self.manager.get_connection_state(sockets[0]) if sockets else None
