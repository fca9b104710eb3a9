"""What arrives on the bus is held to the rules a node's own clients are held to.

Without signing anyone who can publish can say anything (docs/howto/security.md); what a
node must still refuse is what it would refuse from its own clients, and what it cannot
afford: a name no client could register (control characters forging log lines, 5,000
characters), and an envelope over the bound, refused unread.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from support import backplane_stat, connected
from wsfleet import Backplane, ConnectionManager, InMemoryHub
from wsfleet.backplane.wire import VERSION
from wsfleet.testing import MemoryTransport

from .test_signing import publish, wait_until

pytestmark = pytest.mark.anyio

NS = "bus-input"
BOUND = 64 * 1024


def forged(kind: str, node: str, **fields: Any) -> bytes:
    body = {"v": VERSION, "ns": NS, "node": node, "run": "r", "seq": 0, "k": kind}
    return json.dumps(body | fields).encode()


@pytest.mark.parametrize(
    "name",
    ["\x1b[31mEVIL\n2026-12-03 FAKE LOG LINE", "x" * 5000, "tab\there", "\u202eevil"],
    ids=["escape-and-newline", "5000-characters", "tab", "bidi-override"],
)
async def test_a_name_no_client_could_register_is_refused_from_the_bus(name: str) -> None:
    hub = InMemoryHub()
    backplane = Backplane(hub, namespace=NS, node_id="n1", heartbeat_interval=0.1)
    async with ConnectionManager(backplane=backplane) as manager:
        await wait_until(lambda: connected(manager), "n1 connected")
        manager.register(MemoryTransport(), "ann")
        malformed = backplane_stat(manager, "malformed")
        await publish(hub, forged("join", "n2", id=name, group="room"))
        await publish(hub, forged("join", "n2", id="bob", group=name))
        await wait_until(
            lambda: backplane_stat(manager, "malformed") == malformed + 2, "both refused"
        )
        assert manager.get_group_members("room") == set()


async def test_an_envelope_over_the_bound_is_refused_before_it_is_parsed() -> None:
    hub = InMemoryHub()
    backplane = Backplane(hub, namespace=NS, node_id="n1", max_message_size=BOUND)
    async with ConnectionManager(backplane=backplane) as manager:
        await wait_until(lambda: connected(manager), "n1 connected")
        socket = MemoryTransport()
        manager.register(socket, "ann")
        # JSON that would take far more memory parsed than it takes on the wire, and is not
        # even an envelope: refused by its size alone.
        await publish(hub, b"[" + b"{}," * (BOUND // 3 * 4) + b"{}]")
        await wait_until(lambda: backplane_stat(manager, "too large") == 1, "refused as too large")
        assert backplane_stat(manager, "malformed") == 0  # never parsed: not found malformed either
        # And the node goes on taking what is within the bound.
        text = "still here"
        await publish(hub, forged("send", "n2", to="all", text=text))
        with anyio.fail_after(10):
            while text not in socket.received:
                await anyio.sleep(0.005)


async def test_a_flood_of_garbage_is_counted_each_time_and_logged_once_a_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = InMemoryHub()
    backplane = Backplane(hub, namespace=NS, node_id="n1")
    async with ConnectionManager(backplane=backplane) as manager:
        await wait_until(lambda: connected(manager), "n1 connected")
        with caplog.at_level("WARNING", logger="wsfleet"):
            await publish(hub, *(f"garbage {i} {{not json".encode() for i in range(500)))
            await wait_until(lambda: backplane_stat(manager, "malformed") == 500, "all counted")
        lines = [r for r in caplog.records if "malformed" in r.getMessage()]
        assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]
