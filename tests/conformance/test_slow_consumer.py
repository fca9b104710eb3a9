"""A client that stops reading is evicted alone; everyone else gets every message, in order.

Default ``OverflowPolicy`` (1 MiB or 1024 messages behind: disconnect). The stalled client is
a raw peer that joins the room and then never reads again (its receive buffer shrunk, so the
kernel holds little for it). The feed is the server's own (``send_to_group``), paced on the
healthy clients, as a producer that respects its readers would be; the stalled one sets no
pace.
"""

from __future__ import annotations

import json

import anyio

from support import C, D, E
from wsfleet import ConnectionManager

from .peers import client, frame, join, raw_connect
from .proof import ROOM, serves_a_newcomer
from .relay import Relay
from .servers import Combo, serve

PAYLOAD = "y" * 16384
#: At most this many messages (64 MiB in all), far more than the stalled peer's buffers hold.
MOST = 4000
#: Sent after the eviction, to prove the others go on receiving.
AFTER = 100


async def test_a_stalled_client_is_evicted_alone_and_the_others_get_everything(
    combo: Combo,
) -> None:
    async with ConnectionManager(heartbeat=combo.policy()) as manager:
        relay = Relay(manager)
        async with (
            serve(combo, relay.handler) as url,
            client(f"{url}?id=fast") as fast,
            client(f"{url}?id=steady") as steady,
            await raw_connect(f"{url}?id=stalled", rcvbuf=4096) as stalled,
        ):
            for ws in (fast, steady):
                await join(ws, ROOM)
            await stalled.send(frame(0x1, json.dumps({"type": "join", "room": ROOM}).encode()))
            with anyio.fail_after(5):
                while manager.get_group_members(ROOM) != {"fast", "steady", "stalled"}:
                    await anyio.sleep(0.005)
            healthy = [manager.connection(manager.sockets_of(n)[0]) for n in ("fast", "steady")]
            received = {"fast": 0, "steady": 0}
            sent = 0

            async def read(who: str, ws: object) -> None:
                while True:
                    said = json.loads(await ws.recv())  # type: ignore[attr-defined]
                    assert said["text"] == f"{received[who]:06d}{PAYLOAD}", who
                    received[who] += 1

            with anyio.fail_after(60):
                async with anyio.create_task_group() as readers:
                    readers.start_soon(read, "fast", fast)
                    readers.start_soon(read, "steady", steady)
                    evicted_at: int | None = None
                    while sent < MOST and (evicted_at is None or sent < evicted_at + AFTER):
                        said = {"type": "said", "room": ROOM, "from": "feed"}
                        said["text"] = f"{sent:06d}{PAYLOAD}"
                        await manager.send_to_group(ROOM, json.dumps(said))
                        sent += 1
                        while any(conn.queued > 32 for conn in healthy):
                            await anyio.sleep(0.001)
                        if evicted_at is None and relay.first("stalled", E) is not None:
                            evicted_at = sent
                    while min(received.values()) < sent:
                        await anyio.sleep(0.005)
                    readers.cancel_scope.cancel()

            assert evicted_at is not None, f"the stalled client was not evicted in {sent} messages"
            assert relay.first("stalled", E).reason == "slow consumer"  # type: ignore[union-attr]
            await relay.wait_for("stalled", D)
            assert received == {"fast": sent, "steady": sent}
            assert [c.new for c in relay.changes_of("fast")] == [C]
            assert [c.new for c in relay.changes_of("steady")] == [C]
            assert manager.stats().drops.get("slow consumer", 0) >= 1
            await relay.wait_ended("stalled", timeout=10)
            assert manager.get_group_members(ROOM) == {"fast", "steady"}
            await serves_a_newcomer(relay, url)
