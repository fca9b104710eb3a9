"""Idle clients and a silent peer on every combo at once, for as long as the policies' periods.

With the default policies a check of keepalive must last longer than ``ping_interval +
ping_timeout`` (40 s), and ten ping periods take over 200 s. Run one combo after another and
CI pays that six times; so each combo runs here on a thread of its own, with its own event
loop (started as applications start theirs: ``servers.run_as_users_do``), its own server,
manager and clients, and all of them together cost the time of one.

Each run: ``clients`` idle clients that never send anything but answer pings (a browser
tab left open), a friend who is just as quiet until the end, and a silent raw peer that
never answers anything. It lasts ``periods * interval + timeout + slack`` seconds from the
moment they are all registered. Then the friend tells every idle client something, and the
run records what an operator would look at: the state changes, the stats, what each idle
client received, and when and how the silent peer was found out. The checks assert on that.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
from websockets.exceptions import ConnectionClosed

from support import C
from wsfleet import ConnectionManager, ConnectionState, FleetStats

from .peers import client, raw_connect, receive_json, send_json
from .relay import Change, Relay
from .servers import Combo, run_as_users_do, serve


@dataclass(frozen=True)
class Periods:
    """The keepalive settings of a run and how long it lasts, in periods."""

    interval: float
    timeout: float
    idle_after: float | None
    periods: int
    #: Whether the ASGI server's pings are set to ``interval``/``timeout``; ``False`` keeps
    #: the server's defaults (uvicorn: 20 s and 20 s; hypercorn: no pings at all).
    server_keepalive: bool
    #: How late past ``interval + timeout`` a silent peer may be found out.
    slack: float

    @property
    def duration(self) -> float:
        return self.periods * self.interval + self.timeout + self.slack


#: ``HeartbeatPolicy()`` and every server's defaults, for a little longer than it takes to
#: notice a dead peer (40 s); the CI form.
DEFAULTS = Periods(20.0, 20.0, 60.0, 1, server_keepalive=False, slack=4.0)
#: Ten ping periods of the default policy (over 200 s); the full form.
TEN_DEFAULT_PERIODS = Periods(20.0, 20.0, 60.0, 10, server_keepalive=False, slack=4.0)


@dataclass
class IdleRun:
    """What one combo's run saw."""

    combo: Combo
    periods: Periods
    #: From the first idle client's registration to the end of the wait, in seconds.
    ran_for: float = 0.0
    #: Each idle client's state changes, in order.
    idle_changes: dict[str, list[Change]] = field(default_factory=dict)
    #: What each idle client received from its friend at the end.
    received: dict[str, Any] = field(default_factory=dict)
    stats: FleetStats | None = None
    #: The silent peer's first change out of CONNECTED/IDLE, if there was one.
    silent_left: Change | None = None
    #: Seconds from the silent peer's registration to that change.
    silent_after: float | None = None
    #: The silent peer's state changes, in order.
    silent_changes: list[Change] = field(default_factory=list)
    error: BaseException | None = None

    def check(self) -> None:
        """Raise what went wrong in the run itself (not in what it recorded)."""
        if self.error is not None:
            raise self.error


async def idle_run(
    combo: Combo, periods: Periods, clients: int, abandon: threading.Event
) -> IdleRun:
    """One combo's run; see the module docstring. ``abandon`` cuts the wait short."""
    run = IdleRun(combo, periods)
    policy = combo.policy(periods.interval, periods.timeout, periods.idle_after)
    keepalive = None
    if periods.server_keepalive and not combo.wsfleet_pings:
        keepalive = (periods.interval, periods.timeout)
    names = [f"idle-{i}" for i in range(clients)]
    async with ConnectionManager(heartbeat=policy) as manager:
        relay = Relay(manager)
        async with (
            serve(combo, relay.handler, keepalive=keepalive) as url,
            AsyncExitStack() as stack,
        ):
            idle = {n: await stack.enter_async_context(client(f"{url}?id={n}")) for n in names}
            friend = await stack.enter_async_context(client(f"{url}?id=friend"))
            silent = await raw_connect(f"{url}?id=silent")
            stack.push_async_callback(silent.aclose)
            for who in [*names, "friend", "silent"]:
                await relay.wait_for(who, C)
            started = min(relay.registered_at[n] for n in names)
            end = max(relay.registered_at.values()) + periods.duration
            while not abandon.is_set() and anyio.current_time() < end:
                await anyio.sleep(min(0.5, end - anyio.current_time()))
            run.ran_for = anyio.current_time() - started
            run.stats = manager.stats()
            run.idle_changes = {n: relay.changes_of(n) for n in names}
            for who, ws in idle.items():
                try:
                    await send_json(friend, type="tell", to=who, text="still there?")
                    run.received[who] = await receive_json(ws)
                except ConnectionClosed as exc:  # cut off: the changes above tell why
                    run.received[who] = f"closed: {exc}"
            run.silent_changes = relay.changes_of("silent")
            run.silent_left = next(
                (c for c in run.silent_changes if c.new not in (C, ConnectionState.IDLE)), None
            )
            if run.silent_left is not None:
                run.silent_after = run.silent_left.at - relay.registered_at["silent"]
    return run


class IdleFleet:
    """``idle_run`` for several combos at once, each on its own thread and event loop.

    ``start`` returns at once; ``results`` waits for every run. ``abandon`` ends the runs
    early (a test session that stops before it needs them).
    """

    def __init__(self, combos: Iterable[Combo], periods: Periods, clients: int = 1) -> None:
        self.periods = periods
        self.clients = clients
        self._abandon = threading.Event()
        self._results: dict[str, IdleRun] = {}
        self._threads = [
            threading.Thread(
                target=self._run, args=(combo,), name=f"idle fleet {combo.id}", daemon=True
            )
            for combo in combos
        ]
        self._started = False

    def _run(self, combo: Combo) -> None:
        run: Callable[[], Any] = partial(idle_run, combo, self.periods, self.clients, self._abandon)
        try:
            self._results[combo.id] = run_as_users_do(combo.backend, run)
        except BaseException as exc:  # handed to the check that reads this combo's run
            self._results[combo.id] = IdleRun(combo, self.periods, error=exc)

    def start(self) -> IdleFleet:
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()
        return self

    def results(self) -> dict[str, IdleRun]:
        self.start()
        deadline = self.periods.duration * 2 + 60
        for thread in self._threads:
            thread.join(deadline)
            assert not thread.is_alive(), f"{thread.name} still runs after {deadline} s"
        return self._results

    def abandon(self) -> None:
        self._abandon.set()
        for thread in self._threads:
            thread.join(30)


# -- the checks, shared by the conformance suite and the reliability suite --------------------


def check_idle_clients(run: IdleRun) -> None:
    """Every idle client stayed (CONNECTED, then IDLE once ``idle_after`` passed), was never
    timed out, and still received what its friend told it at the end."""
    run.check()
    p = run.periods
    assert run.ran_for >= p.periods * p.interval + p.timeout
    registered = (None, C, "registered")
    went_idle = (C, ConnectionState.IDLE, f"no activity for {p.idle_after:g} s")
    for who, changes in run.idle_changes.items():
        seen = [(c.old, c.new, c.reason) for c in changes]
        what = f"{who}: {[(c.new.name, c.reason) for c in changes]}"
        if p.idle_after is not None and run.ran_for > p.idle_after + p.slack:
            assert seen == [registered, went_idle], what
        elif p.idle_after is None or run.ran_for < p.idle_after:
            assert seen == [registered], what
        else:  # too close to idle_after to say which
            assert seen in ([registered], [registered, went_idle]), what
        told = {"type": "told", "from": "friend", "text": "still there?"}
        assert run.received[who] == told, who
    stats = run.stats
    assert stats is not None
    silent_timed_out = run.silent_left is not None and run.silent_left.reason == (
        "heartbeat timeout"
    )
    # The silent peer's timeout is the only one there may be.
    assert stats.heartbeat_timeouts == int(silent_timed_out)
    if run.combo.wsfleet_pings:
        pinged = len(run.idle_changes) + 1  # and the friend
        assert stats.pings_sent >= pinged * p.periods


def check_silent_peer(run: IdleRun) -> None:
    """The silent peer was found out in ``interval + timeout`` (+ slack), never before, and
    ended in ERROR, as documented for a dead peer; then DISCONNECTED (no retry policy)."""
    run.check()
    p = run.periods
    left = run.silent_left
    assert left is not None, f"a silent peer was never noticed in {run.ran_for:.1f} s"
    assert run.silent_after is not None
    assert run.silent_after >= p.interval + p.timeout - 0.05, "noticed too early"
    assert run.silent_after <= p.interval + p.timeout + p.slack, "noticed too late"
    assert left.new is ConnectionState.ERROR, f"a dead peer ended {left.new.name} ({left.reason})"
    if run.combo.wsfleet_pings:
        assert left.reason == "heartbeat timeout"
    assert run.silent_changes[-1].new is ConnectionState.DISCONNECTED
