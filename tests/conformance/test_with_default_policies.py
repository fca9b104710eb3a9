"""With the default policies, for longer than they take to act: ``HeartbeatPolicy()`` (a ping
every 20 s, 20 s for its pong) and every server's own defaults (uvicorn pings every 20 s and
waits 20 s; hypercorn does not ping at all).

A healthy idle client must outlive ``ping_interval + ping_timeout`` (40 s) untouched, which
is exactly what a pong lost on its way to the manager would break (issue #11: every idle
client cut with 1011 after 40 s, on websockets/asyncio). Beside it, a silent peer must be
found out in those 40 s. All combos run at once (``idle_fleet``), in the background while the
other checks run; ten default periods are the reliability suite's full form
(``tests/reliability/test_12_idle_clients.py``).
"""

from __future__ import annotations

import pytest

from .idle_fleet import IdleFleet, check_idle_clients, check_silent_peer
from .servers import Combo

pytestmark = pytest.mark.slow  # 45 s of default periods (in the background of the others)


def test_an_idle_client_outlives_interval_plus_timeout(
    combo: Combo, default_idle_fleet: IdleFleet
) -> None:
    check_idle_clients(default_idle_fleet.results()[combo.id])


def test_a_silent_peer_is_found_out_within_interval_plus_timeout(
    combo: Combo, default_idle_fleet: IdleFleet, request: pytest.FixtureRequest
) -> None:
    if not combo.detects_silent_peers:
        request.applymarker(
            pytest.mark.xfail(
                reason="hypercorn does not ping by default, and never times out a pong: "
                "a silent peer stays until TCP fails (docs/howto/fastapi.md)",
                raises=AssertionError,
                strict=True,
            )
        )
    check_silent_peer(default_idle_fleet.results()[combo.id])
