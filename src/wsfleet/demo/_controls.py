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

Anyone who can reach the port can open ``/admin``, so the socket takes anything: what is not
JSON is answered in words (``_inbound``), an ack repeats only a known ``op`` and a few
characters of a bad value, and at most ``MAX_STALLED`` simulated clients are fed at once
(each is a task writing a hundred messages a second).
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

from .._runtime.connection import Connection
from ..errors import InvalidTransition, UnknownSocket
from ..fsm.states import ConnectionState
from ..testing import MemoryTransport
from ._board import Board
from ._inbound import Unreadable, decode, shown
from ._policies import ADMINS, NO_RETRY

if TYPE_CHECKING:
    from .._manager import ConnectionManager

__all__ = ["Controls", "abort", "serve_dashboard"]

C = ConnectionState.CONNECTED
I = ConnectionState.IDLE  # noqa: E741

#: How fast a stalled client is fed (every 10 ms: evicted within about 2 s), and for how long
#: at most.
FEED_EVERY: Final = 0.01
FEED_FOR: Final = 30.0
#: How many simulated clients may be stalled at once: more presses are refused meanwhile.
MAX_STALLED: Final = 5
#: The buttons; an ack names the op only if it is one of these.
OPS: Final = frozenset(("idle", "drop", "stall", "kill"))
#: What a dashboard should send, for the error that answers something unreadable.
EXAMPLE: Final = '{"op": "stall"}'


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
        #: The simulated clients being fed now.
        self.stalled = 0

    def _live(self, key: object) -> Connection:
        conn = self.board.find(key)
        if conn is None:
            raise Refused(f"no live connection {shown(key)}")
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
        if self.stalled >= MAX_STALLED:
            raise Refused(f"{self.stalled} simulated clients are stalling: wait for one to go")
        name = f"slow-{next(self._simulated)}"
        socket = MemoryTransport(name)
        self.manager.register(socket, name)
        self.manager.set_retry_policy(socket, NO_RETRY)
        self.manager.add_to_group(name, "lobby")
        socket.stall()
        self.stalled += 1
        self._tg.start_soon(self._feed, self.manager.connection(socket), name=f"demo feed {name}")
        return f"{name} joined 'lobby' and stopped reading"

    async def _feed(self, conn: Connection) -> None:
        """Send to a stalled client until the overflow policy cuts it off.

        It has nobody to close it, so after ``FEED_FOR`` it is unregistered here.
        """
        sent = 0
        try:
            with anyio.move_on_after(FEED_FOR):
                while conn.registered and conn.state in (C, I):
                    sent += 1
                    await conn.send(json.dumps({"op": "tick", "n": sent}))
                    await anyio.sleep(FEED_EVERY)
            self.manager.unregister(conn.socket)
        finally:
            self.stalled -= 1

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
                raise Refused(f"unknown op {shown(op)}")
        except Refused as exc:
            return {"type": "ack", "op": _known(op), "ok": False, "detail": str(exc)}
        self.board.poke()
        return {"type": "ack", "op": op, "ok": True, "detail": detail}


def _known(op: object) -> str | None:
    """``op`` if it names a button: an ack never repeats whatever else a client sent."""
    return op if isinstance(op, str) and op in OPS else None


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
                request = decode(message, EXAMPLE)
            except Unreadable as exc:
                reply = {"type": "ack", "op": None, "ok": False, "detail": str(exc)}
            else:
                reply = await controls.handle(request)
            await session.send(json.dumps(reply))
