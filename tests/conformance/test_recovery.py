"""Recovery over every way of serving: a client that left comes back with the last position
it read and gets what its room was sent meanwhile, then the live messages, each once.

The room keeps history in memory and frames its messages with ``json_frame``; the client is
a websockets client, as a browser would be.
"""

from __future__ import annotations

import json
from typing import Any

from wsfleet import ConnectionManager, HistoryPolicy
from wsfleet.framing import json_frame

from .peers import client, close, receive_json, send_json
from .servers import Combo, serve

ROOM = "room"


async def test_a_client_that_comes_back_recovers_what_it_missed(combo: Combo) -> None:
    async with ConnectionManager(
        heartbeat=combo.policy(), history=HistoryPolicy(size=50), frame=json_frame
    ) as manager:

        async def handler(ws: Any, identifier: str) -> None:
            async with manager.session(ws, identifier) as session:
                async for request in session:  # {"join": room, "since": position | null}
                    asked = json.loads(request)
                    manager.add_to_group(identifier, asked["join"])
                    replayed = 0
                    if asked["since"] is not None:
                        replayed = await manager.recover(ws, asked["join"], since=asked["since"])
                    await session.send(json.dumps({"joined": asked["join"], "replayed": replayed}))

        async with serve(combo, handler) as url:
            async with client(f"{url}?id=alice") as alice:
                await send_json(alice, join=ROOM, since=None)
                assert await receive_json(alice) == {"joined": ROOM, "replayed": 0}
                for n in range(3):
                    await manager.send_to_group(ROOM, f"m{n}")
                seen = [await receive_json(alice) for _ in range(3)]
                assert [frame["data"] for frame in seen] == ["m0", "m1", "m2"]
                await close(alice)
            for n in range(3, 6):  # alice is away
                await manager.send_to_group(ROOM, f"m{n}")
            async with client(f"{url}?id=alice") as back:
                await send_json(back, join=ROOM, since=seen[-1]["position"])
                replayed = [await receive_json(back) for _ in range(3)]
                assert await receive_json(back) == {"joined": ROOM, "replayed": 3}
                await manager.send_to_group(ROOM, "m6")
                live = await receive_json(back)
                assert [frame["data"] for frame in [*replayed, live]] == ["m3", "m4", "m5", "m6"]
                offsets = [int(frame["position"].rsplit(":", 1)[1]) for frame in [*seen, *replayed]]
                assert offsets == [1, 2, 3, 4, 5, 6]
