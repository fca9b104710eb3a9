"""The application every conformance check serves: a chat relay, written as a careful user would.

Clients send JSON text: ``{"type": "join", "room": r}``, ``{"type": "say", "room": r,
"text": t}`` (relayed to every member of ``r``, the sender included) and ``{"type": "tell",
"to": name, "text": t}``. Relays are JSON written with ``ensure_ascii=False``, so the text a
client sent goes on exactly as it was decoded: a lone surrogate escaped in the JSON
(``"\\ud800"``) reaches ``send_to_group`` as it is, and wsfleet has to refuse it. The app
answers the sender ``{"type": "error", ...}`` on any ``ValueError`` (not JSON, a bad room or
identifier, text no transport can send), which is what wsfleet's errors are for.

``Relay`` also records what an operator would look at: every state change (with the time),
when each identifier registered, and the close code that ended each session.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import anyio

from wsfleet import ConnectionManager, ConnectionState


@dataclass(frozen=True)
class Change:
    identifier: str
    old: ConnectionState | None
    new: ConnectionState
    reason: str | None
    at: float


class Relay:
    """The chat relay, on one manager."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        self.changes: list[Change] = []
        #: identifier -> loop time of its first registration
        self.registered_at: dict[str, float] = {}
        #: identifier -> the close code that ended its (last) session
        self.ended: dict[str, int | None] = {}
        #: reasons of sessions refused (bad identifiers)
        self.refused: list[str] = []
        manager.on_state_change(self._record)

    def _record(self, change: Any) -> None:
        who = change.connection.identifier
        now = anyio.current_time()
        if change.old is None:
            self.registered_at.setdefault(who, now)
        self.changes.append(Change(who, change.old, change.new, change.reason, now))

    # -- the application ------------------------------------------------------------------

    async def handler(self, ws: Any, identifier: str) -> None:
        async with self.manager.session(ws, identifier) as session:
            if session.refused is not None:
                self.refused.append(session.refused)
            async for message in session:
                try:
                    reply = await self.act(identifier, json.loads(message))
                except ValueError as exc:  # not JSON, a bad name, unsendable text
                    reply = {"type": "error", "error": f"{type(exc).__name__}: {exc}"}
                if reply is not None:
                    await session.send(json.dumps(reply))
        self.ended[identifier] = session.close_code

    async def act(self, me: str, request: Any) -> dict[str, str] | None:
        if not isinstance(request, dict):
            return {"type": "error", "error": "expected a JSON object"}
        kind, room, text, to = (request.get(key) for key in ("type", "room", "text", "to"))
        if kind == "join" and isinstance(room, str):
            self.manager.add_to_group(me, room)
            return {"type": "joined", "room": room}
        if kind == "say" and isinstance(room, str) and isinstance(text, str):
            said = {"type": "said", "room": room, "from": me, "text": text}
            await self.manager.send_to_group(room, json.dumps(said, ensure_ascii=False))
            return None
        if kind == "tell" and isinstance(to, str) and isinstance(text, str):
            told = {"type": "told", "from": me, "text": text}
            await self.manager.send_to_one(to, json.dumps(told, ensure_ascii=False))
            return None
        return {"type": "error", "error": "unknown or incomplete request"}

    # -- what the checks read ---------------------------------------------------------------

    def changes_of(self, who: str) -> list[Change]:
        return [change for change in self.changes if change.identifier == who]

    def first(self, who: str, state: ConnectionState) -> Change | None:
        return next((c for c in self.changes_of(who) if c.new is state), None)

    async def wait_for(self, who: str, state: ConnectionState, timeout: float = 5.0) -> Change:
        """``who``'s first change into ``state``, waiting for it up to ``timeout`` seconds."""
        with anyio.move_on_after(timeout):
            while (change := self.first(who, state)) is None:
                await anyio.sleep(0.005)
            return change
        raise AssertionError(
            f"{who} never reached {state.name} within {timeout} s; its changes: "
            f"{[(c.new.name, c.reason) for c in self.changes_of(who)]}"
        )

    async def wait_left(self, who: str, timeout: float = 5.0) -> Change:
        """``who``'s first change out of CONNECTED and IDLE (to ERROR or DISCONNECTED)."""
        with anyio.move_on_after(timeout):
            while True:
                for change in self.changes_of(who):
                    if change.new not in (ConnectionState.CONNECTED, ConnectionState.IDLE):
                        return change
                await anyio.sleep(0.005)
        raise AssertionError(
            f"{who} was still open after {timeout} s; its changes: "
            f"{[(c.new.name, c.reason) for c in self.changes_of(who)]}"
        )

    async def wait_ended(self, who: str, timeout: float = 5.0) -> int | None:
        with anyio.move_on_after(timeout):
            while who not in self.ended:
                await anyio.sleep(0.005)
            return self.ended[who]
        raise AssertionError(f"the session of {who} did not end within {timeout} s")

    def state_of(self, who: str) -> ConnectionState | None:
        sockets = self.manager.sockets_of(who)
        return self.manager.get_connection_state(sockets[0]) if sockets else None
