"""Every check here runs once per way of serving (``servers.COMBOS``), on that server's loop,
started as an application starts it (``servers.run_as_users_do``), not by anyio's plugin."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from functools import partial

import pytest

from .idle_fleet import DEFAULTS, IdleFleet
from .servers import COMBOS, Combo, run_as_users_do


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an ``async def`` check of a combo on that combo's loop, as users run it."""
    combo = pyfuncitem.funcargs.get("combo")
    if not isinstance(combo, Combo) or not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    try:
        run_as_users_do(combo.backend, partial(pyfuncitem.obj, **args))
    except BaseExceptionGroup as group:
        # A failed assertion inside a server's or a client's task group arrives wrapped in
        # groups of one; raise it as itself, so that reports (and ``xfail(raises=...)``)
        # see what failed.
        sole: BaseException = group
        while isinstance(sole, BaseExceptionGroup) and len(sole.exceptions) == 1:
            sole = sole.exceptions[0]
        if sole is group:
            raise
        raise sole from None
    return True


@pytest.fixture(params=COMBOS, ids=[combo.id for combo in COMBOS])
def combo(request: pytest.FixtureRequest) -> Combo:
    value: Combo = request.param
    return value


@pytest.fixture(scope="session")
def default_idle_fleet() -> Iterator[IdleFleet]:
    """The default-policy run of every combo at once (``idle_fleet.DEFAULTS``, 45 s), shared
    by the checks that read it."""
    fleet = IdleFleet(COMBOS, DEFAULTS)
    try:
        yield fleet
    finally:
        fleet.abandon()


@pytest.fixture(scope="session", autouse=True)
def start_idle_fleet_early(request: pytest.FixtureRequest) -> None:
    """Start the default-policy run with the first check of this directory, if the session
    holds checks that read it: it then runs while the other checks do, not after them."""
    if any("default_idle_fleet" in getattr(i, "fixturenames", ()) for i in request.session.items):
        request.getfixturevalue("default_idle_fleet").start()
