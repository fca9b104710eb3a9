"""The chat: what a browser page says over ``/ws?id=<name>`` and what the server does with it.

Requests are JSON objects with an ``op``: ``join``/``leave`` a group (the reply's
``already`` says the page was in it, or out of it, before; a join's ``since``, the last
position the page read there, has the room's history replay what it missed: the reply's
``recovered`` says how many, or ``lost`` why it could not), ``say`` to a group,
``tell`` a person, ``shout`` to everyone, ``who`` is here. Everything a client receives is
JSON with an ``op`` too, starting with ``welcome``, which carries the session's resume
token: the page keeps it and, after an abnormal close, reconnects with
``/ws?id=<name>&resume=<token>`` to take its held session back (groups kept, missed
messages delivered first).

Every message goes through the manager's fan-out, so the chat exercises the same paths an
application would: groups, one identifier with several tabs, broadcast, bounded queues.
Rooms keep history (``ROOM_HISTORY``): what is said there reaches the pages framed with its
position (``wsfleet.framing.json_frame``), which a page keeps per room, so a page whose
session could not be resumed (it expired, or the node that held it is gone) rejoins its
rooms with ``since`` and misses nothing.

Whatever one client sends, every reply stays far below the manager's ``max_message_size``
and no request ends a handler: a name is at most ``MAX_NAME`` printable characters, a line
at most ``MAX_TEXT``, an identifier joins at most ``MAX_GROUPS`` groups (the ``joined``
reply and the welcome list them all), ``who`` lists the first ``WHO_SHOWN`` people and
groups and says how many more there are, an error repeats at most a few characters of what
was sent, and a message that is not JSON is answered in words (``_inbound``). Should a reply
still be refused as too large, the sender gets an error instead and its connection stays.
"""

from __future__ import annotations

import heapq
import json
import logging
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Final

from ..errors import MessageTooLarge, RecoveryImpossible, WsfleetError
from ..policies.history import HistoryPolicy
from ._inbound import decode, shown
from ._policies import ADMINS, RESERVED

if TYPE_CHECKING:
    from .._manager import ConnectionManager
    from .._runtime.session import Session

__all__ = [
    "MAX_GROUPS",
    "MAX_NAME",
    "MAX_TEXT",
    "WHO_SHOWN",
    "ChatError",
    "check_identity",
    "serve_chat",
]

logger = logging.getLogger("wsfleet.demo")

MAX_NAME: Final = 32
MAX_TEXT: Final = 500
#: The most groups one identifier may be in (all its tabs together).
MAX_GROUPS: Final = 20
#: How many people, and how many groups, a ``who`` reply lists.
WHO_SHOWN: Final = 50
#: What a room keeps for pages that come back: its last 200 lines, for ten minutes.
ROOM_HISTORY: Final = HistoryPolicy(size=200, ttl=600)
#: What a client should send, for the error that answers something unreadable.
EXAMPLE: Final = '{"op": "who"}'


class ChatError(ValueError):
    """A request the chat refuses; its text goes back to the sender."""


def _name(kind: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ChatError(f"{kind} must be a non-empty string")
    value = value.strip()
    if len(value) > MAX_NAME or not value.isprintable():
        raise ChatError(f"{kind} must be at most {MAX_NAME} printable characters")
    return value


def _text(request: dict[str, Any]) -> str:
    text = request.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ChatError("text must be a non-empty string")
    if len(text) > MAX_TEXT:
        raise ChatError(f"text must be at most {MAX_TEXT} characters")
    return text


def check_identity(query: dict[str, list[str]]) -> tuple[str, str | None]:
    """The chat identifier and resume token of a ``/ws`` request; ``ChatError`` if unusable.

    Checked before the handshake, so a bad name gets an HTTP 400 the page can show.
    """
    names = query.get("id")
    if not names:
        raise ChatError("connect to /ws?id=<your name>")
    who = _name("id", names[0])
    if who in RESERVED:
        raise ChatError(f"{who!r} is reserved for the dashboard")
    resume = query.get("resume", [None])[0] or None
    return who, resume


def _group(request: dict[str, Any]) -> str:
    group = _name("group", request.get("group"))
    if group == ADMINS:
        raise ChatError(f"{ADMINS!r} is the dashboard's group")
    return group


async def handle(
    manager: ConnectionManager, who: str, request: object, socket: object = None
) -> dict[str, Any] | None:
    """Carry out one request from ``socket``; return the reply for the sender alone, if any."""
    if not isinstance(request, dict):
        raise ChatError("send a JSON object with an 'op'")
    op = request.get("op")
    if op in ("join", "leave"):
        group = _group(request)
        mine = manager.groups_of(who)
        was_member = group in mine
        if op == "join" and not was_member and len(mine) >= MAX_GROUPS:
            raise ChatError(f"you are in {len(mine)} groups, the most allowed: leave one first")
        since = request.get("since") if op == "join" else None
        if since is not None and not isinstance(since, str):
            raise ChatError("since must be the last position the page read, a string")
        recovery: dict[str, Any] = {}
        if op == "join":
            manager.keep_history(group, ROOM_HISTORY)
            manager.add_to_group(who, group)
            if since is not None and socket is not None:
                # At once after joining: no live line reaches the page before the replay.
                try:
                    recovery["recovered"] = await manager.recover(socket, group, since=since)
                except RecoveryImpossible as exc:
                    recovery["lost"] = exc.reason
        else:
            manager.remove_from_group(who, group)
        return {
            "op": "joined" if op == "join" else "left",
            "group": group,
            "groups": _groups(manager, who),
            # Joining a group twice is harmless; the page says "already in" rather than
            # "joined" a second time.
            "already": was_member == (op == "join"),
            **recovery,
        }
    if op == "say":
        group = _group(request)
        if group not in manager.groups_of(who):
            raise ChatError(f"join {group!r} before saying something there")
        said = {"op": "said", "group": group, "from": who, "text": _text(request)}
        await manager.send_to_group(group, json.dumps(said))
        return None
    if op == "tell":
        to = _name("to", request.get("to"))
        told = {"op": "told", "from": who, "to": to, "text": _text(request)}
        if to in RESERVED or not manager.nodes_of(to):
            raise ChatError(f"nobody called {to!r} is connected")
        await manager.send_to_many([to, who], json.dumps(told))  # the sender's tabs see it too
        return None
    if op == "shout":
        shouted = {"op": "shouted", "from": who, "text": _text(request)}
        # Everyone but the dashboards, which have a feed of their own.
        await manager.broadcast(json.dumps(shouted), exclude=manager.get_group_members(ADMINS))
        return None
    if op == "who":
        admins = manager.get_group_members(ADMINS)
        people = manager.identifiers() - admins
        groups = manager.groups() - {ADMINS}
        return {
            "op": "people",
            "people": _first(people),
            "more_people": max(0, len(people) - WHO_SHOWN),
            "groups": _first(groups),
            "more_groups": max(0, len(groups) - WHO_SHOWN),
        }
    raise ChatError(f"unknown op {shown(op)}")


def _first(names: Collection[str]) -> list[str]:
    """The first ``WHO_SHOWN`` names in order, without sorting them all."""
    return heapq.nsmallest(WHO_SHOWN, names)


def _groups(manager: ConnectionManager, who: str) -> list[str]:
    return sorted(manager.groups_of(who))


async def _reply(session: Session, reply: dict[str, Any]) -> None:
    """Send ``reply`` to the sender alone; one that is refused as too large becomes an error.

    The rules above keep every reply small, so this is the last line, not the first: a
    reply that fails must not end the handler (the connection would close under the page).
    """
    try:
        await session.send(json.dumps(reply))
    except MessageTooLarge as exc:
        logger.warning("a %r reply to %r was refused: %s", reply.get("op"), session.identifier, exc)
        await session.send(json.dumps({"op": "error", "reason": "the reply was too large"}))


async def serve_chat(manager: ConnectionManager, ws: object, who: str, resume: str | None) -> None:
    """One browser page, from its welcome to its close; the session is wsfleet's."""
    async with manager.session(ws, who, resume=resume) as session:
        welcome = {
            "op": "welcome",
            "id": who,
            "resume": session.resume_token,
            "resumed": session.resumed,
            "groups": _groups(manager, who),
        }
        await _reply(session, welcome)
        async for message in session:
            try:
                reply = await handle(manager, who, decode(message, EXAMPLE), ws)
            except (WsfleetError, ValueError) as exc:  # ChatError and Unreadable included
                reply = {"op": "error", "reason": str(exc)}
            if reply is not None:
                await _reply(session, reply)
