"""A reconnect storm on a virtual clock: the computation behind run_all.py's histogram.

The simulation is ``wsfleet.testing.reconnect_storm``, the one the reliability check
(``tests/reliability/test_07_reconnect_storm.py``) runs: every client loses the server at
t = 0 and the server answers again at ``OUTAGE``. Each client has its own seeded
``random.Random``, so a run is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from wsfleet import RetryPolicy
from wsfleet.testing import Storm, reconnect_storm

OUTAGE = 10.0
BUCKET = 0.1


def seeded(**settings: object) -> Callable[[int], RetryPolicy]:
    """A policy per client, each with its own seeded random stream."""

    def make(i: int) -> RetryPolicy:
        return RetryPolicy(rng=random.Random(7_000 + i), **settings)  # type: ignore[arg-type]

    return make


def storm(make_policy: Callable[[int], RetryPolicy], clients: int) -> Storm:
    policies = (make_policy(i) for i in range(clients))
    return reconnect_storm(policies, outage=OUTAGE, bucket=BUCKET)
