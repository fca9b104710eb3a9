"""A producer that outruns the server is slowed down; only a peer that stopped reading is cut.

The feed is a plain ``await manager.send_to_group(...)`` loop with nothing else in it, as
applications write it, and the default policies. Where writers cannot keep up (one message
per write on trio-websocket and ASGI), every queue grows at once: that is the server being
behind, not its clients, and the producer must wait for the writers instead of the queues
overflowing and evicting everyone. A client that stopped reading is still evicted, alone.
"""

from __future__ import annotations

import json

import anyio
import pytest

from support import C, E
from wsfleet import ConnectionManager

from .peers import client, frame, join, raw_connect
from .proof import ROOM, serves_a_newcomer
from .relay import Relay
from .servers import Combo, serve

#: A tight producer on every combo: tens of seconds in all.
pytestmark = pytest.mark.slow

READERS = 10
MESSAGES = 3000
#: 12 MiB to each reader: far more than what the kernel holds for a peer that stopped reading.
PAYLOAD = "z" * 4096


async def _feed(combo: Combo, *, stalled: bool) -> None:
    async with ConnectionManager(heartbeat=combo.policy()) as manager:
        relay = Relay(manager)
        async with serve(combo, relay.handler) as url, anyio.create_task_group() as tg:
            received = dict.fromkeys(range(READERS), 0)
            joined = anyio.Event()
            checked = anyio.Event()  # readers stay connected until the checks are done
            ready = 0

            async def reader(n: int) -> None:
                nonlocal ready
                async with client(f"{url}?id=r{n}", max_size=None) as ws:
                    await join(ws, ROOM)
                    ready += 1
                    if ready == READERS:
                        joined.set()
                    while received[n] < MESSAGES:
                        said = json.loads(await ws.recv())
                        assert said["text"] == f"{received[n]:06d}{PAYLOAD}", n
                        received[n] += 1
                    await checked.wait()

            for n in range(READERS):
                tg.start_soon(reader, n)
            with anyio.fail_after(10):
                await joined.wait()
            peer = None
            if stalled:
                peer = await raw_connect(f"{url}?id=stalled", rcvbuf=4096)
                join_frame = frame(0x1, json.dumps({"type": "join", "room": ROOM}).encode())
                await peer.send(join_frame)
                with anyio.fail_after(5):
                    while "stalled" not in manager.get_group_members(ROOM):
                        await anyio.sleep(0.005)
            with anyio.fail_after(120):
                for i in range(MESSAGES):  # as tight as an application writes it
                    said = {"type": "said", "room": ROOM, "from": "feed"}
                    said["text"] = f"{i:06d}{PAYLOAD}"
                    await manager.send_to_group(ROOM, json.dumps(said))
                while min(received.values()) < MESSAGES:
                    await anyio.sleep(0.01)
            stats = manager.stats()
            evicted = {c.identifier for c in relay.changes if c.new is E}
            assert evicted == ({"stalled"} if stalled else set()), (evicted, stats.drops)
            for n in range(READERS):
                assert [c.new for c in relay.changes_of(f"r{n}")] == [C]
            assert received == dict.fromkeys(range(READERS), MESSAGES)
            if not stalled:
                assert stats.dropped == 0, stats.drops
            else:  # the stalled peer's messages, and no more than it was sent
                assert set(stats.drops) <= {"slow consumer", "connection lost", "send failed"}
                assert stats.dropped <= MESSAGES, stats.drops
            await serves_a_newcomer(relay, url)
            checked.set()
            if peer is not None:
                await peer.aclose()


async def test_a_tight_producer_with_no_slow_client_evicts_nobody(combo: Combo) -> None:
    await _feed(combo, stalled=False)


async def test_a_tight_producer_beside_a_stalled_client_evicts_only_that_one(
    combo: Combo,
) -> None:
    await _feed(combo, stalled=True)
