"""The dashboard's buttons: make the machine move so that a visitor can watch it.

Each button takes the path the same event would take in production:

* **idle**: ``set_connection_state(socket, IDLE)``; the table allows CONNECTED -> IDLE, and
  the client's next message brings it back (``activity``).
* **drop**: the server cuts the TCP connection without a closing handshake, as a crashed
  proxy or a lost Wi-Fi link would. The adapter reports close code 1006, the connection goes
  to ERROR and, having a retry policy, is held; the page reconnects with its resume token
  and the session goes RECONNECTING -> CONNECTED.
* **stall**: a browser cannot be made to stop reading its WebSocket, so a simulated client
  (a ``MemoryTransport`` registered on the server) joins, stops reading and is fed until
  its queue overflows and the overflow policy evicts it (1008 slow consumer).
* **kill**: close every connection but the dashboards' with 1001 (going away), as a server
  does when it shuts down.

The dashboard sends ``{"op": "idle" | "drop", "key": "c3"}`` or ``{"op": "stall" | "kill"}``
over its own socket (``/admin``) and gets ``{"type": "ack", "op", "ok", "detail"}`` back.
"""

from __future__ import annotations

import itertools
import json
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
from websockets.asyncio.connection import Connection as AsyncioWebSocket

try:
    from websockets.trio.connection import Connection as TrioWebSocket
except ImportError:  # trio is not installed: only the asyncio backend runs
    TrioWebSocket = None  # type: ignore[assignment,misc]

from .._connection import Connection
from ..errors import InvalidTransition, UnknownSocket
from ..fsm.states import ConnectionState
from ..testing import MemoryTransport
from ._board import Board
from ._policies import ADMINS, NO_RETRY

if TYPE_CHECKING:
    from .._manager import ConnectionManager

__all__ = ["Controls", "abort", "serve_dashboard"]

C = ConnectionState.CONNECTED
I = ConnectionState.IDLE  # noqa: E741
D = ConnectionState.DISCONNECTED

#: How fast a stalled client is fed (every 10 ms: evicted within about 2 s), and for how long
#: at most.
FEED_EVERY: Final = 0.01
FEED_FOR: Final = 30.0


class Refused(Exception):
    """A button that cannot act now; its text goes back to the dashboard."""


async def abort(socket: object) -> None:
    """Cut a websockets connection's TCP stream, with no close frame: an abnormal close.

    asyncio: ``transport.abort()`` drops the connection at once. trio: closing the stream ends
    websockets' reader, which then reports the connection lost (1006). Either way the peer
    sees the stream end without a closing handshake.
    """
    if isinstance(socket, AsyncioWebSocket):
        socket.transport.abort()
        return
    if TrioWebSocket is not None and isinstance(socket, TrioWebSocket):
        await socket.stream.aclose()
        return
    raise Refused(f"cannot abort a {type(socket).__name__}")


class Controls:
    """Carries out the dashboard's buttons; simulated clients live in ``task_group``."""

    def __init__(
        self, manager: ConnectionManager, board: Board, task_group: anyio.abc.TaskGroup
    ) -> None:
        self.manager = manager
        self.board = board
        self._tg = task_group
        self._simulated = itertools.count(1)

    def changed(self, socket: object, old: ConnectionState | None, new: ConnectionState) -> None:
        """A simulated client that reached DISCONNECTED is forgotten (nobody else would)."""
        if new is D and isinstance(socket, MemoryTransport):
            self.manager.unregister(socket)

    def _live(self, key: object) -> Connection:
        conn = self.board.find(key)
        if conn is None:
            raise Refused(f"no live connection {key!r}")
        return conn

    def idle(self, key: object) -> str:
        conn = self._live(key)
        try:
            self.manager.set_connection_state(conn.socket, I, "forced idle from the dashboard")
        except InvalidTransition as exc:
            raise Refused(f"{conn.identifier}: {exc}") from None
        return f"{conn.identifier} is IDLE until it sends something"

    async def drop(self, key: object) -> str:
        conn = self._live(key)
        if conn.state not in (C, I):
            raise Refused(f"{conn.identifier} is {conn.state.name}: nothing to drop")
        if isinstance(conn.socket, MemoryTransport):
            conn.closed(1006, "dropped from the dashboard")
            await conn.socket.close(1006, "dropped")
        else:
            await abort(conn.socket)
        return f"{conn.identifier}'s connection was cut"

    def stall(self) -> str:
        name = f"slow-{next(self._simulated)}"
        socket = MemoryTransport(name)
        self.manager.register(socket, name)
        self.manager.set_retry_policy(socket, NO_RETRY)
        self.manager.add_to_group(name, "lobby")
        socket.stall()
        self._tg.start_soon(self._feed, self.manager.connection(socket), name=f"demo feed {name}")
        return f"{name} joined 'lobby' and stopped reading"

    async def _feed(self, conn: Connection) -> None:
        """Send to a stalled client until the overflow policy cuts it off."""
        sent = 0
        with anyio.move_on_after(FEED_FOR):
            while conn.registered and conn.state in (C, I):
                sent += 1
                await conn.send(json.dumps({"op": "tick", "n": sent}))
                await anyio.sleep(FEED_EVERY)

    async def kill(self) -> str:
        manager = self.manager
        admins = manager.get_group_members(ADMINS)
        sockets = [
            socket
            for identifier in manager.identifiers()
            if identifier not in admins
            for socket in manager.sockets_of(identifier)
        ]
        async with anyio.create_task_group() as tg:
            for socket in sockets:
                tg.start_soon(self._close, socket)
        return f"closed {len(sockets)} connection(s) with 1001"

    async def _close(self, socket: object) -> None:
        with suppress(UnknownSocket):  # gone meanwhile
            await self.manager.close(socket, 1001, "going away (killed from the dashboard)")

    async def handle(self, request: object) -> dict[str, Any]:
        """Carry out one button press; the reply says what happened."""
        op = request.get("op") if isinstance(request, dict) else None
        try:
            if not isinstance(request, dict):
                raise Refused("send a JSON object with an 'op'")
            if op == "idle":
                detail = self.idle(request.get("key"))
            elif op == "drop":
                detail = await self.drop(request.get("key"))
            elif op == "stall":
                detail = self.stall()
            elif op == "kill":
                detail = await self.kill()
            else:
                raise Refused(f"unknown op {op!r}")
        except Refused as exc:
            return {"type": "ack", "op": op, "ok": False, "detail": str(exc)}
        self.board.poke()
        return {"type": "ack", "op": op, "ok": True, "detail": detail}


async def serve_dashboard(
    manager: ConnectionManager, board: Board, controls: Controls, ws: object, resume: str | None
) -> None:
    """One dashboard page: a member of ``admins``, receiving the board's snapshots."""
    async with manager.session(ws, "dashboard", resume=resume) as session:
        hello = board.hello()
        manager.add_to_group("dashboard", ADMINS)
        hello["resume"] = session.resume_token
        await session.send(json.dumps(hello))
        board.poke()
        async for message in session:
            try:
                request = json.loads(message)
            except ValueError:
                request = None
            await session.send(json.dumps(await controls.handle(request)))
