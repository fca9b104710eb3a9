"""Closes, as the application sees them: clean ones end DISCONNECTED, abrupt ones ERROR then
DISCONNECTED (no retry policy), and shutting down closes every client with a code it can read.

Default policies throughout. Where a server tells the application something else than what
happened on the wire, the check asserts what the user gets and says why.
"""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import TaskStatus

from support import C, D, E
from wsfleet import ConnectionManager

from .peers import client, close, frame, join, raw_connect, reset, wait_closed
from .peers import close_code as read_close_code
from .proof import ROOM, serves_a_newcomer, snapshot, untouched
from .relay import Relay
from .servers import Combo, serve

#: The close code clients see when the server is stopped while they are connected (the
#: manager still running, as when it lives in an ASGI app's lifespan, which ends after the
#: server has dealt with its connections). Found, not chosen: see the check.
SERVER_STOP_CODE = {
    # websockets' asyncio server closes its connections with 1001 (going away).
    "websockets-asyncio": 1001,
    # websockets' trio server too, closed as websockets documents (``async with server``
    # or ``server.aclose()``). Cancelling its nursery instead drops every connection (1006).
    "websockets-trio": 1001,
    # trio-websocket has no graceful stop: its nursery is cancelled, and each cancelled
    # session closes its socket with 1000.
    "trio_websocket-trio": 1000,
    # uvicorn closes every WebSocket with 1012 (service restart) before the lifespan ends.
    "asgi-uvicorn-asyncio": 1012,
    # hypercorn waits graceful_timeout (3 s), then cancels the handlers: the cancelled
    # session closes its socket with 1000.
    "asgi-hypercorn-asyncio": 1000,
    "asgi-hypercorn-trio": 1000,
}


@pytest.mark.parametrize("code", [1000, 1001, None], ids=["1000", "1001", "no-code"])
async def test_a_clean_close_ends_disconnected(combo: Combo, code: int | None) -> None:
    async with ConnectionManager(heartbeat=combo.policy()) as manager:
        relay = Relay(manager)
        async with serve(combo, relay.handler) as url, client(f"{url}?id=stays") as stays:
            await join(stays, ROOM)
            before = snapshot(relay, ["stays"])
            if code is None:  # a browser's ws.close(): a close frame without a code
                async with await raw_connect(f"{url}?id=leaves") as raw:
                    await relay.wait_for("leaves", C)
                    await raw.send(frame(0x8))
                    assert await read_close_code(raw) in (1000, 1005)  # the server's echo
            else:
                async with client(f"{url}?id=leaves") as leaves:
                    await relay.wait_for("leaves", C)
                    await close(leaves, code)
            left = await relay.wait_left("leaves")
            seen = 1005 if code is None else code
            if combo.reported(seen) == seen:
                assert (left.new, left.reason) == (D, f"closed ({seen})")
            else:
                # hypercorn tells the application 1006 for any close the client starts
                # (pgjones/hypercorn#127), so behind hypercorn a clean close ends in ERROR,
                # as docs/howto/fastapi.md says.
                assert (left.new, left.reason) == (E, "abnormal close (1006)")
                await relay.wait_for("leaves", D)
            assert await relay.wait_ended("leaves") == combo.reported(seen)
            assert manager.sockets_of("leaves") == []
            await untouched(relay, before, {"stays": stays})


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_an_abrupt_close_ends_in_error_then_disconnected(combo: Combo, how: str) -> None:
    """A TCP connection that ends without a closing handshake: FIN (the client process
    exited) or RST (it crashed, or a middlebox dropped it)."""
    async with ConnectionManager(heartbeat=combo.policy()) as manager:
        relay = Relay(manager)
        async with serve(combo, relay.handler) as url, client(f"{url}?id=stays") as stays:
            await join(stays, ROOM)
            before = snapshot(relay, ["stays"])
            raw = await raw_connect(f"{url}?id=drops")
            await relay.wait_for("drops", C)
            if how == "rst":
                await reset(raw)
            else:
                await raw.aclose()
            left = await relay.wait_left("drops")
            assert left.new is E, f"a dropped connection ended {left.new.name} ({left.reason})"
            assert left.reason == "abnormal close (1006)"
            await relay.wait_for("drops", D)  # no retry policy: it gives up
            assert manager.sockets_of("drops") == []
            await untouched(relay, before, {"stays": stays})
            await serves_a_newcomer(relay, url)


async def test_leaving_the_managers_block_closes_every_client_with_1001(combo: Combo) -> None:
    names = ["ann", "bob", "cyd"]
    seen: dict[str, tuple[int | None, str | None]] = {}

    async def connected(url: str, who: str, *, task_status: TaskStatus[None]) -> None:
        async with client(f"{url}?id={who}") as ws:
            await join(ws, ROOM)
            task_status.started()
            seen[who] = (await wait_closed(ws), ws.close_reason)

    manager = ConnectionManager(heartbeat=combo.policy())
    relay = Relay(manager)
    async with (
        serve(combo, relay.handler) as url,
        anyio.create_task_group() as clients,
        manager,  # left first, while the server and the clients are still there
    ):
        for who in names:
            await clients.start(connected, url, who)
    assert seen == dict.fromkeys(names, (1001, "going away"))
    for who in names:
        assert await relay.wait_ended(who) == 1001
        assert relay.changes_of(who)[-1].new is D
    assert manager.count() == 0


async def test_stopping_the_server_closes_every_client(combo: Combo) -> None:
    """The server stops (Ctrl-C) while the manager still runs, as with an ASGI app's
    lifespan: every client gets a closing frame (never a dropped connection), every
    session ends and the manager holds nothing. The code is the server's: see
    ``SERVER_STOP_CODE``."""
    names = ["ann", "bob"]
    codes: dict[str, int | None] = {}

    async def connected(url: str, who: str, *, task_status: TaskStatus[None]) -> None:
        async with client(f"{url}?id={who}") as ws:
            await join(ws, ROOM)
            task_status.started()
            codes[who] = await wait_closed(ws, timeout=10)

    async with ConnectionManager(heartbeat=combo.policy()) as manager:
        relay = Relay(manager)
        async with (
            anyio.create_task_group() as clients,  # they outlive the server
            serve(combo, relay.handler) as url,
        ):
            for who in names:
                await clients.start(connected, url, who)
        assert codes == dict.fromkeys(names, SERVER_STOP_CODE[combo.id])
        assert manager.count() == 0
        for who in names:
            assert relay.changes_of(who)[-1].new is D
