"""Keepalive, with short periods: an idle client that answers pings lives on; a silent one is
found in time. The same checks with the default periods (20 s + 20 s) are in
``test_default_policies.py``; ten default periods, in ``tests/reliability``.

Where wsfleet pings (the websockets adapter on both loops, trio-websocket), the manager's
``HeartbeatPolicy`` gets the short periods. Over ASGI the server pings, so they go to the
server: uvicorn's ``ws_ping_interval``/``ws_ping_timeout``, hypercorn's
``websocket_ping_interval`` (hypercorn has no pong timeout).
"""

from __future__ import annotations

import anyio
import pytest

from support import C, D, E
from wsfleet import ConnectionManager

from .peers import client, raw_connect, receive_json, send_json
from .relay import Relay
from .servers import Combo, serve

PING = 0.25
PONG = 0.25
PERIODS = 10
#: How late past interval + timeout a silent peer may be noticed (a loaded CI machine).
SLACK = 0.75


def settings(combo: Combo) -> tuple[ConnectionManager, tuple[float, float] | None]:
    """A manager with the short periods, and the server's keepalive (ASGI) or ``None``."""
    manager = ConnectionManager(heartbeat=combo.policy(PING, PONG))
    return manager, None if combo.wsfleet_pings else (PING, PONG)


@pytest.mark.slow  # ten ping periods, on every combo
async def test_an_idle_client_that_answers_pings_lives_through_ten_ping_periods(
    combo: Combo,
) -> None:
    manager, keepalive = settings(combo)
    async with manager:
        relay = Relay(manager)
        async with (
            serve(combo, relay.handler, keepalive=keepalive) as url,
            client(f"{url}?id=idle") as idle,  # never sends a thing, answers every ping
            client(f"{url}?id=friend") as friend,
        ):
            registered = (await relay.wait_for("idle", C)).at
            await relay.wait_for("friend", C)
            if combo.wsfleet_pings:
                # Both clients are pinged: PERIODS + 1 pings each means PERIODS answered.
                with anyio.move_on_after(PERIODS * PING * 4 + 5):
                    while (
                        manager.stats().pings_sent < 2 * (PERIODS + 1)
                        and len(relay.changes_of("idle")) == 1
                    ):
                        await anyio.sleep(0.01)
                await anyio.sleep(PONG + 0.05)  # and the last one's deadline has passed too
            else:
                await anyio.sleep_until(registered + PERIODS * PING + PONG + 0.05)
            changes = [(c.old, c.new, c.reason) for c in relay.changes_of("idle")]
            assert changes == [(None, C, "registered")]
            assert anyio.current_time() - registered >= PERIODS * PING
            if combo.wsfleet_pings:
                assert manager.stats().pings_sent >= 2 * (PERIODS + 1)
            assert manager.stats().heartbeat_timeouts == 0
            await send_json(friend, type="tell", to="idle", text="still there?")
            told = await receive_json(idle)
            assert told == {"type": "told", "from": "friend", "text": "still there?"}


async def test_a_silent_peer_is_noticed_within_interval_plus_timeout(
    combo: Combo, request: pytest.FixtureRequest
) -> None:
    if not combo.detects_silent_peers:
        request.applymarker(
            pytest.mark.xfail(
                reason="hypercorn pings but never times out a pong (docs/howto/fastapi.md): "
                "a silent peer stays until TCP fails",
                raises=AssertionError,
                strict=True,
            )
        )
    manager, keepalive = settings(combo)
    async with manager:
        relay = Relay(manager)
        async with (
            serve(combo, relay.handler, keepalive=keepalive) as url,
            client(f"{url}?id=alive") as alive,
        ):
            await relay.wait_for("alive", C)
            silent = await raw_connect(f"{url}?id=silent")  # never reads, never answers
            async with silent:
                registered = (await relay.wait_for("silent", C)).at
                left = await relay.wait_left("silent", timeout=PING + PONG + SLACK)
                took = left.at - registered
                assert took >= PING + PONG - 0.05, f"noticed after {took:.3f} s: too early"
                # The docs promise ERROR for a dead peer, whoever noticed it (ASGI: the server).
                assert left.new is E, f"a dead peer ended {left.new.name} ({left.reason})"
                if combo.wsfleet_pings:
                    assert left.reason == "heartbeat timeout"
                await relay.wait_for("silent", D)  # no retry policy: it gives up
            assert relay.state_of("alive") is C
            assert manager.stats().heartbeat_timeouts == (1 if combo.wsfleet_pings else 0)
            await send_json(alive, type="tell", to="alive", text="me")
            assert await receive_json(alive) == {"type": "told", "from": "alive", "text": "me"}
