"""Check 7: a reconnect storm. 10,000 simulated clients lose their server for 10 s.

No sockets and no event loop: the check is about the retry schedule, so it runs
``wsfleet.testing.reconnect_storm``, which drives what the manager drives, the shared
``FleetMachine`` with one ``Lifecycle`` per client, on a virtual clock (``ManualClock``) and a
heap of due retries, as ``_timers.Timers`` does: on ERROR the machine asks for a retry after
``policy.delay(...)``; when it is due, ``retry_due`` moves the client to RECONNECTING (one
attempt, counted in its 100 ms bucket); an attempt before the server is back fails (ERROR
again), one after it succeeds (CONNECTED).
Each client has its own seeded ``random.Random``, so the run is reproducible and no two
clients share a stream of draws. The check does not depend on the event loop, so it runs
once rather than on asyncio and trio. The short form simulates 2,000 clients, the full form
the issue's 10,000; the criterion scales with the fleet.

The measure: the peak number of attempts in any 100 ms bucket, against the uniform rate,
which is what the clients would cost the server if each spread its first attempt evenly
over the first backoff interval (``base_delay``): ``clients / (base_delay / 100 ms)``, 1,000
per 100 ms for the default 1 s. Criterion: peak <= 2 x the uniform rate. With jitter off
every client retries at the same instant and the whole fleet lands in one bucket, which the
criterion rejects: that proves the measure can see a herd.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from wsfleet import JitterMode, RetryPolicy
from wsfleet.policies import DEFAULT_RETRY_POLICY
from wsfleet.testing import Storm, reconnect_storm

from .conftest import Figure, Sizes

pytestmark = pytest.mark.reliability

OUTAGE = 10.0
BUCKET = 0.1


def storm(make_policy: Callable[[int], RetryPolicy], clients: int) -> Storm:
    """Every client loses the server at t=0; the server answers again at ``OUTAGE``."""
    policies = (make_policy(i) for i in range(clients))
    return reconnect_storm(policies, outage=OUTAGE, bucket=BUCKET)


def seeded(**settings: object) -> Callable[[int], RetryPolicy]:
    def make(i: int) -> RetryPolicy:
        return RetryPolicy(rng=random.Random(7_000 + i), **settings)  # type: ignore[arg-type]

    return make


def test_the_default_policy_spreads_a_storm(sizes: Sizes, figure: Figure) -> None:
    clients = sizes.pick(2_000, 10_000)
    make = seeded()
    assert make(0) == DEFAULT_RETRY_POLICY  # the default in every field (rng aside)
    result = storm(make, clients)
    uniform = result.uniform_rate(DEFAULT_RETRY_POLICY.base_delay)
    figure("attempts", len(result.attempts))
    figure("reconnected", result.reconnected, "clients", f"= {clients}")
    figure("peak attempts per 100 ms", result.peak, "", f"<= {2 * uniform:g}")
    figure("peak / uniform rate", result.peak / uniform, "", "<= 2")
    assert result.reconnected == clients  # nobody ran out of attempts in a 10 s outage
    assert result.peak <= 2 * uniform


def test_without_jitter_the_whole_fleet_lands_in_one_bucket(sizes: Sizes, figure: Figure) -> None:
    clients = sizes.pick(2_000, 10_000)
    make = seeded(jitter=0.0)
    result = storm(make, clients)
    uniform = result.uniform_rate(make(0).base_delay)
    first = min(result.attempts)
    figure("peak attempts per 100 ms", result.peak, "", f"= {clients} (every client at once)")
    figure("peak / uniform rate", result.peak / uniform, "", "> 2: the measure sees a herd")
    assert first == pytest.approx(1.0)
    assert result.buckets()[math.floor(first / BUCKET)] == clients
    assert result.peak == clients
    assert result.peak > 2 * uniform
    assert result.reconnected == clients


@pytest.mark.parametrize("mode", [JitterMode.FULL, JitterMode.DECORRELATED])
def test_a_spreading_jitter_mode_keeps_the_peak_under_twice_the_uniform_rate(
    mode: JitterMode, sizes: Sizes, figure: Figure
) -> None:
    """The measure is not out of reach: the modes meant for herds meet it."""
    clients = sizes.pick(2_000, 10_000)
    make = seeded(jitter_mode=mode)
    result = storm(make, clients)
    uniform = result.uniform_rate(make(0).base_delay)
    figure("peak attempts per 100 ms", result.peak, "", f"<= {2 * uniform:g}")
    figure("peak / uniform rate", result.peak / uniform, "", "<= 2")
    figure("reconnected", result.reconnected, "clients")
    assert result.peak <= 2 * uniform
