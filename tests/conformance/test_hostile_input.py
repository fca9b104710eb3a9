"""Hostile input harms only its sender, and the server goes on serving.

Each check runs beside two bystanders in the room. After the attack: they kept their sockets
and states (same instants), the next message in the room reaches them and nothing before it
(nothing of the attack leaked to them), and a new client can connect and talk.

Frames no well-behaved client sends come from a raw peer: invalid UTF-8 in a text frame
(RFC 6455: 1007), a reserved opcode and an unmasked client frame (1002); behind
trio-websocket and hypercorn the offender's connection is dropped instead
(``Combo.answers_protocol_errors``). An oversize message (one byte over the server's
default limit: 1009) and text that no transport can send come from a real client, as do a
bad identifier and a flood.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from websockets.exceptions import ConnectionClosed

from support import C, D, E
from wsfleet import ConnectionManager

from .peers import (
    client,
    close_code,
    frame,
    join,
    raw_connect,
    receive_json,
    send_json,
    wait_closed,
)
from .proof import ROOM, Snapshot, serves_a_newcomer, snapshot, untouched
from .relay import Relay
from .servers import Combo, serve

#: Messages the flooder sends, as fast as its connection takes them.
FLOOD = 2000


@dataclass
class Scene:
    manager: ConnectionManager
    relay: Relay
    url: str
    bystanders: dict[str, Any]
    before: Snapshot | None = None

    def freeze(self) -> None:
        """What must not change: taken once the attacker is in place."""
        self.before = snapshot(self.relay, list(self.bystanders))

    async def unharmed(self) -> None:
        assert self.before is not None, "freeze() before the attack"
        await untouched(self.relay, self.before, self.bystanders)
        await serves_a_newcomer(self.relay, self.url)


@asynccontextmanager
async def scene(combo: Combo) -> AsyncIterator[Scene]:
    """A server with default policies and two bystanders, ann and bob, in the room."""
    async with ConnectionManager(heartbeat=combo.policy()) as manager:
        relay = Relay(manager)
        async with (
            serve(combo, relay.handler) as url,
            client(f"{url}?id=ann") as ann,
            client(f"{url}?id=bob") as bob,
        ):
            for ws in (ann, bob):
                await join(ws, ROOM)
            yield Scene(manager, relay, url, {"ann": ann, "bob": bob})


async def test_a_bad_identifier_is_refused_with_1008_on_its_socket_alone(combo: Combo) -> None:
    async with scene(combo) as s:
        s.freeze()
        for _ in range(3):  # again and again: the server must not tire of it
            async with client(f"{s.url}?id={'x' * 300}") as bad:
                assert await wait_closed(bad) == 1008
                assert bad.close_reason.startswith("invalid identifier: ")
        with anyio.fail_after(5):  # each refused block ends after its socket is closed
            while len(s.relay.refused) < 3:
                await anyio.sleep(0.005)
        assert s.manager.identifiers() == {"ann", "bob"}
        await s.unharmed()


async def test_an_oversize_message_is_closed_with_1009(combo: Combo) -> None:
    async with scene(combo) as s, client(f"{s.url}?id=big") as big:
        await s.relay.wait_for("big", C)
        s.freeze()
        with suppress(ConnectionClosed):  # the server may close before it has it all
            await big.send(os.urandom(combo.max_message_size + 1))  # incompressible
        assert await wait_closed(big, timeout=30) == 1009
        await _ended_in_error(s.relay, "big", combo.reported(1009))
        await s.unharmed()


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(0x1, b"caf\xc3"), 1007),  # text cut in the middle of a character
        (frame(0x1, b"\xff\xfe"), 1007),  # bytes that are never UTF-8
        (frame(0x3, b"?"), 1002),  # a reserved opcode
        (frame(0x1, b"hello", masked=False), 1002),  # clients must mask
    ],
    ids=["truncated-utf8", "invalid-utf8", "reserved-opcode", "unmasked"],
)
async def test_a_frame_that_breaks_the_protocol_is_closed_with_its_code(
    combo: Combo, data: bytes, code: int
) -> None:
    async with scene(combo) as s, await raw_connect(f"{s.url}?id=rogue") as rogue:
        await s.relay.wait_for("rogue", C)
        s.freeze()
        await rogue.send(data)
        assert await close_code(rogue) == (code if combo.answers_protocol_errors else 1006)
        await rogue.aclose()  # and goes, as a client does once it has the server's close
        await _ended_in_error(s.relay, "rogue", combo.reported(code))
        await s.unharmed()


@pytest.mark.parametrize("kind", ["say", "tell"])
async def test_text_no_transport_can_send_gets_its_sender_an_error(combo: Combo, kind: str) -> None:
    """JSON may escape a lone surrogate (valid JSON, valid UTF-8 on the wire); decoded, it is
    text no WebSocket can carry. wsfleet refuses it before anything is queued, with a
    ValueError the app answers; nobody else gets anything."""
    async with scene(combo) as s, client(f"{s.url}?id=mallory") as mallory:
        await join(mallory, ROOM)
        s.freeze()
        target = {"room": ROOM} if kind == "say" else {"to": "ann"}
        drops = dict(s.manager.stats().drops)
        await mallory.send(json.dumps({"type": kind, "text": "\ud800", **target}))
        reply = await receive_json(mallory)
        assert reply["type"] == "error"
        assert reply["error"].startswith("UnencodableMessage: ")
        assert s.manager.stats().drops == drops
        assert s.relay.state_of("mallory") is C
        await s.unharmed()  # ann and bob got nothing before this message
        said = await receive_json(mallory)  # mallory is in the room too, and still served
        assert said == {"type": "said", "room": ROOM, "from": "ann", "text": "still here"}


async def test_a_bad_name_in_a_request_gets_its_sender_an_error(combo: Combo) -> None:
    async with scene(combo) as s, client(f"{s.url}?id=mallory") as mallory:
        await s.relay.wait_for("mallory", C)
        s.freeze()
        for bad in ({"type": "tell", "to": "x" * 300, "text": "hi"}, {"type": "join", "room": ""}):
            await send_json(mallory, **bad)
            reply = await receive_json(mallory)
            assert reply["type"] == "error"
            assert reply["error"].startswith("InvalidArgument: ")
        assert s.relay.state_of("mallory") is C
        await s.unharmed()


@pytest.mark.slow
async def test_a_flood_from_one_client_does_not_hold_up_the_others(combo: Combo) -> None:
    """One client sends FLOOD messages as fast as it can (and reads its echoes); meanwhile
    the bystanders' round trips go on, each within a few seconds."""
    async with scene(combo) as s, client(f"{s.url}?id=flood") as flood:
        await join(flood, "flood")
        s.freeze()
        ann, bob = s.bystanders["ann"], s.bystanders["bob"]
        echoes = 0
        trips = 0
        flooding = True

        async def send_all() -> None:
            for i in range(FLOOD):
                await send_json(flood, type="say", room="flood", text=str(i))

        async def read_echoes() -> None:
            nonlocal echoes, flooding
            while echoes < FLOOD:
                said = await receive_json(flood, timeout=30)
                assert said["text"] == str(echoes)
                echoes += 1
            flooding = False

        async def round_trips() -> None:
            nonlocal trips
            while flooding or trips == 0:
                await send_json(ann, type="tell", to="bob", text=f"trip {trips}")
                told = await receive_json(bob)
                assert told == {"type": "told", "from": "ann", "text": f"trip {trips}"}
                trips += 1

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_echoes)
                tg.start_soon(send_all)
                tg.start_soon(round_trips)
        assert echoes == FLOOD
        assert trips >= 1
        assert s.relay.state_of("flood") is C
        await s.unharmed()


async def _ended_in_error(relay: Relay, who: str, code: int) -> None:
    left = await relay.wait_left(who)
    assert (left.new, left.reason) == (E, f"abnormal close ({code})")
    await relay.wait_for(who, D)
    await relay.wait_ended(who, timeout=10)
