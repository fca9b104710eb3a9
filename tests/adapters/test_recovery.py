"""Recovery end to end over real sockets: a ``manager.connect`` client is dropped by the
server, the room keeps talking, the client redials and asks for what it missed, and gets
every message once, in order.

The server is a manager with a websockets server on 127.0.0.1 (both loops), its room keeping
history and framed by ``json_frame``; the client is another manager's outbound connection
(every client backend on every loop it supports), which keeps the last position it read
and sends it back in its join request when it is connected again.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from adapters.test_outbound import close_ws, ws_server
from support import C, wait_for
from wsfleet import (
    Connection,
    ConnectionManager,
    HistoryPolicy,
    RecoveryImpossible,
    RetryPolicy,
    StateChange,
)
from wsfleet.framing import json_frame, unframe

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[("asyncio", "websockets"), ("trio", "websockets"), ("trio", "trio-websocket")],
    ids=["asyncio-websockets", "trio-websockets", "trio-trio_websocket"],
)
def flavour(request: pytest.FixtureRequest) -> tuple[str, str]:
    combo: tuple[str, str] = request.param
    return combo


@pytest.fixture
def anyio_backend(flavour: tuple[str, str]) -> str:
    return flavour[0]


async def test_a_dropped_client_recovers_everything_it_missed(flavour: tuple[str, str]) -> None:
    sockets: list[Any] = []
    recovered: list[int | str] = []

    async with ConnectionManager(
        heartbeat=None, history=HistoryPolicy(size=100), frame=json_frame
    ) as server:

        async def handler(ws: Any) -> None:
            async with server.session(ws, "robot") as session:
                sockets.append(ws)
                async for request in session:  # {"join": group, "since": position | None}
                    asked = json.loads(request)
                    server.add_to_group("robot", asked["join"])
                    if asked["since"] is not None:  # at once: nothing live comes before it
                        try:
                            recovered.append(
                                await server.recover(ws, asked["join"], since=asked["since"])
                            )
                        except RecoveryImpossible as exc:
                            recovered.append(exc.reason)

        async with ws_server(handler) as url, ConnectionManager(heartbeat=None) as client:
            got: list[str] = []
            last: list[str] = []

            def received(connection: Connection, message: str | bytes) -> None:
                position, text = unframe(message)
                last[:] = [str(position)]
                got.append(str(text))

            async def rejoin(change: StateChange) -> None:
                conn = change.connection
                if change.new is C and isinstance(conn, Connection):
                    since = last[0] if last else None
                    await conn.send(json.dumps({"join": "room", "since": since}))

            client.on_state_change(rejoin)
            policy = RetryPolicy(max_attempts=20, base_delay=0.05, max_delay=0.1, jitter=0)
            await client.connect(
                url, "robot", retry_policy=policy, on_message=received, backend=flavour[1]
            )
            await wait_for(lambda: server.groups_of("robot") == {"room"})
            for n in range(3):
                await server.send_to_group("room", f"m{n}")
            await wait_for(lambda: len(got) == 3)
            await close_ws(sockets[0], 1011, "dropped")  # abnormal: the client redials
            await wait_for(lambda: not server.groups_of("robot"))
            for n in range(3, 8):
                await server.send_to_group("room", f"m{n}")
            await wait_for(lambda: len(sockets) == 2 and recovered)
            await server.send_to_group("room", "m8")
            await wait_for(lambda: len(got) == 9)
            await anyio.sleep(0.05)  # a duplicate, had there been one, would be here by now
            assert got == [f"m{n}" for n in range(9)]
            assert recovered == [5]
