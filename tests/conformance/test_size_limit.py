"""One setting limits what a client may send, on every way of serving.

``ConnectionManager(max_message_size=N)``: a message of N bytes goes through, one of N + 1
closes its sender with 1009, whichever library reads it. websockets and trio-websocket stop
reading such a message early (the limit is handed to them); behind ASGI the server reads it
whole and the session refuses it on receipt (``stats().inbound_drops["too big"]``). Either
way the application never sees it, its sender ends in ERROR, and the bystanders go on.
"""

from __future__ import annotations

from contextlib import suppress

import anyio
from websockets.exceptions import ConnectionClosed

from support import E
from wsfleet import ConnectionManager

from .peers import client, join, receive_json, send_json, wait_closed
from .proof import ROOM, serves_a_newcomer, snapshot, untouched
from .relay import Relay
from .servers import Combo, serve

LIMIT = 4096


def said(text: str) -> str:
    """A "say" request whose JSON is ``len(text) + SAY_OVERHEAD`` bytes."""
    return f'{{"type": "say", "room": "big", "text": "{text}"}}'


SAY_OVERHEAD = len(said(""))


async def test_the_size_limit_is_one_setting_on_every_adapter(combo: Combo) -> None:
    async with ConnectionManager(heartbeat=combo.policy(), max_message_size=LIMIT) as manager:
        relay = Relay(manager)
        async with (
            serve(combo, relay.handler) as url,
            client(f"{url}?id=ann") as ann,
            client(f"{url}?id=big", compression=None) as big,
        ):
            await join(ann, ROOM)
            await join(big, "big")
            before = snapshot(relay, ["ann"])
            fits = "x" * (LIMIT - SAY_OVERHEAD)
            await big.send(said(fits))  # exactly the limit: delivered
            assert (await receive_json(big))["text"] == fits
            with suppress(ConnectionClosed):  # the server may close before it has it all
                await big.send(said(fits + "x"))  # one byte over
            with anyio.fail_after(30):
                assert await wait_closed(big, timeout=30) == 1009
            left = await relay.wait_left("big")
            assert left.new is E
            # Bytes, not characters: text of fewer characters than the limit but more bytes
            # (two a character) is over it on every adapter too.
            async with client(f"{url}?id=wide", compression=None) as wide:
                await join(wide, "big")
                with suppress(ConnectionClosed):
                    await wide.send(said("é" * ((LIMIT - SAY_OVERHEAD) // 2 + 1)))
                assert await wait_closed(wide, timeout=30) == 1009
            await send_json(ann, type="say", room=ROOM, text="still here")
            assert (await receive_json(ann))["text"] == "still here"
            await untouched(relay, before, {"ann": ann})
            await serves_a_newcomer(relay, url)
