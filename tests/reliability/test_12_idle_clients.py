"""Check 12: idle clients, through ten ping periods, on every adapter x server x loop at once.

Idle clients that never send a thing but answer every ping (browser tabs left open) must
stay (CONNECTED, then IDLE once ``idle_after`` has passed, never timed out:
``heartbeat_timeouts`` counts only the silent peer) and still receive at the end; beside
them, a silent peer that answers nothing must be found out within ``ping_interval +
ping_timeout``, and never before. Over ASGI the server pings (uvicorn; hypercorn never times
a pong out, so there the silent peer stays: a known limit, checked as such).

Short form (CI): 10 periods of 0.5 s (wsfleet's or the ASGI server's pings), 5 idle clients
per combo, about 7 s. Full form: 10 periods of the default policy, ``HeartbeatPolicy()`` and
every server's defaults (uvicorn 20 s + 20 s, hypercorn no pings), over 200 s, 20 idle
clients per combo. Every combo runs at once, each on its own thread and event loop
(``tests/conformance/idle_fleet.py``, shared with the conformance suite, whose CI form runs
the default policy for 45 s).
"""

from __future__ import annotations

import pytest

from conformance.idle_fleet import (
    TEN_DEFAULT_PERIODS,
    IdleFleet,
    IdleRun,
    Periods,
    check_idle_clients,
    check_silent_peer,
)
from conformance.servers import COMBOS, Combo

from .conftest import Figure, full_form

pytestmark = [pytest.mark.reliability, pytest.mark.slow]  # ten ping periods, every combo

SHORT = Periods(0.5, 0.5, idle_after=2.0, periods=10, server_keepalive=True, slack=1.0)

each_combo = pytest.mark.parametrize("combo", COMBOS, ids=[c.id for c in COMBOS])


@pytest.fixture(scope="module")
def runs() -> dict[str, IdleRun]:
    full = full_form()
    fleet = IdleFleet(COMBOS, TEN_DEFAULT_PERIODS if full else SHORT, clients=20 if full else 5)
    try:
        return fleet.start().results()
    finally:
        fleet.abandon()


@each_combo
def test_idle_clients_stay_through_ten_ping_periods(
    combo: Combo, runs: dict[str, IdleRun], figure: Figure
) -> None:
    run = runs[combo.id]
    run.check()
    assert run.stats is not None
    figure("ran for", run.ran_for, "s", f">= {run.periods.duration - run.periods.slack:g} s")
    figure("idle clients", len(run.idle_changes))
    figure("pings sent by wsfleet", run.stats.pings_sent)
    figure("heartbeat timeouts", run.stats.heartbeat_timeouts, "", "the silent peer's only")
    check_idle_clients(run)


@each_combo
def test_a_silent_peer_beside_them_is_found_out_in_time(
    combo: Combo, runs: dict[str, IdleRun], figure: Figure, request: pytest.FixtureRequest
) -> None:
    if not combo.detects_silent_peers:
        request.applymarker(
            pytest.mark.xfail(
                reason="hypercorn never times out a pong (docs/howto/fastapi.md)",
                raises=AssertionError,
                strict=True,
            )
        )
    run = runs[combo.id]
    p = run.periods
    if run.silent_after is not None:
        figure(
            "silent peer found out after", run.silent_after, "s", f"{p.interval + p.timeout:g} s"
        )
    check_silent_peer(run)
