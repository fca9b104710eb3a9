"""One shared ``transitions`` machine driving every connection's lifecycle.

Why it is built this way
------------------------
``transitions`` gives each model its own bookkeeping when the model is added to a machine:
``Machine(model=...)`` costs tens of kilobytes and a millisecond per connection, and
``add_model``/``remove_model`` scan a list, so both turn O(n) at fleet sizes. Nothing in the
library needs that registration to run a transition, though: ``Event.trigger(model, ...)``
drives any object that has a ``state`` attribute. So wsfleet builds ONE ``Machine`` (with
``model=None``) from the table in ``table.py`` and fires its events on ``Lifecycle``
objects that the machine never holds. A lifecycle costs a slotted object, a state change is
one dictionary look-up plus the library's own transition, and dropping a connection is just
forgetting it.

The pitfalls this avoids, on purpose:

* ``on_enter_<state>`` methods are only found on registered models: hooks are callables named
  in the state definitions instead.
* An exception in an ``on_enter`` hook leaves the state changed: the hooks here only update
  the lifecycle's own counters; everything with side effects (notifications, scheduling a
  retry) happens after the transition has finished.
* A trigger fired inside a callback runs nested: the one follow-up transition the lifecycle
  needs (ERROR -> DISCONNECTED when no retry is possible) is fired by the driver afterwards.
* ``queued=True`` would share one queue across all connections; ``LockedMachine`` blocks the
  event loop; ``AsyncMachine`` only runs on asyncio; ``GraphMachine`` keeps a graph per model.
  None of them is used here (diagrams build a separate throw-away machine).
* No auto-transitions (``to_<state>``): a state change the table does not name is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from transitions import Machine, State

from ..errors import InvalidTransition
from ..policies.retry import RetryPolicy
from .clock import Clock, MonotonicClock
from .states import ConnectionState
from .table import TABLE, Rule, births, rules_by_pair

__all__ = ["FleetMachine", "Lifecycle", "RetryHook", "StateChange", "StateChangeHook"]

logger = logging.getLogger("wsfleet.fsm")

# ``transitions`` logs three INFO lines for every state change it runs ("Executed callback",
# "Finished processing state ... callbacks"): here those are wsfleet's internals, once per
# connection change, and they would flood an application logging at INFO. wsfleet logs each
# change itself (DEBUG, ``wsfleet.fsm``). An application that set a level for
# ``transitions`` keeps it.


def quiet_library_logger(library: logging.Logger) -> None:
    """Raise ``library`` to WARNING, unless the application set a level for it already."""
    if library.level == logging.NOTSET:
        library.setLevel(logging.WARNING)


quiet_library_logger(logging.getLogger("transitions"))

C = ConnectionState.CONNECTED
E = ConnectionState.ERROR
R = ConnectionState.RECONNECTING
D = ConnectionState.DISCONNECTED


class Lifecycle:
    """The state-machine part of one connection: its state and its retry bookkeeping.

    The manager's ``Connection`` subclasses it, so a connection is one slotted object. The
    attributes are written only by ``FleetMachine`` (the choke point and the state hooks);
    read them, do not assign them.
    """

    __slots__ = (
        "attempts",
        "changed_at",
        "last_delay",
        "outage_started",
        "reason",
        "retry_policy",
        "state",
        "up_since",
    )

    def __init__(self, retry_policy: RetryPolicy | None = None) -> None:
        self.state: ConnectionState = D
        self.changed_at: float = 0.0
        #: Retry attempts made in the current outage.
        self.attempts: int = 0
        #: When the current outage began (monotonic), for the policy's time budget.
        self.outage_started: float | None = None
        #: When the connection last came up; IDLE still counts as up.
        self.up_since: float | None = None
        #: The previous retry delay, which decorrelated jitter grows from.
        self.last_delay: float | None = None
        #: Why the last change happened.
        self.reason: str | None = None
        #: This connection's own policy; ``None`` means the machine's default.
        self.retry_policy: RetryPolicy | None = retry_policy


@dataclass(frozen=True, slots=True)
class StateChange:
    """What every state-change notification carries."""

    connection: Lifecycle
    old: ConnectionState | None
    """``None`` when the connection was just created."""
    new: ConnectionState
    at: datetime
    reason: str | None = None


StateChangeHook = Callable[[StateChange], None]
RetryHook = Callable[[Lifecycle, float], None]
"""Called with (lifecycle, delay) when a retry should be attempted after ``delay`` seconds."""


class _Step:
    """Everything one requested change needs, passed to the library's callbacks as an argument.

    Threading it through ``EventData.args`` rather than storing it on the lifecycle keeps the
    per-connection object small and the shared machine free of per-call state.
    """

    __slots__ = ("changes", "driver", "give_up", "now", "reason", "retry_delay")

    def __init__(self, driver: FleetMachine, now: float, reason: str | None) -> None:
        self.driver = driver
        self.now = now
        self.reason = reason
        self.changes: list[tuple[ConnectionState, ConnectionState, str | None]] = []
        self.retry_delay: float | None = None
        self.give_up = False


def _step(event: Any) -> _Step:
    step: _Step = event.args[0]
    return step


# -- guards ------------------------------------------------------------------------------


def _can_retry(event: Any) -> bool:
    step = _step(event)
    return step.driver.can_retry(event.model, step.now)


GUARDS: Final[Mapping[str, Callable[[Any], bool]]] = {"can_retry": _can_retry}


# -- state hooks: bookkeeping only, no side effects --------------------------------------


def _reset_outage(model: Lifecycle) -> None:
    model.attempts = 0
    model.outage_started = None
    model.last_delay = None


def _entered_connected(event: Any) -> None:
    model: Lifecycle = event.model
    if model.up_since is None:
        model.up_since = _step(event).now
        policy = _step(event).driver.policy_of(model)
        if policy is None or policy.reset_after is None:
            _reset_outage(model)


def _entered_error(event: Any) -> None:
    model: Lifecycle = event.model
    step = _step(event)
    driver = step.driver
    policy = driver.policy_of(model)
    if model.up_since is not None:
        # Only a connection that stayed up long enough earns a fresh attempt counter: one
        # that is accepted and dropped at once keeps backing off.
        if policy is None or policy.should_reset(step.now - model.up_since):
            _reset_outage(model)
        model.up_since = None
    if model.outage_started is None:
        model.outage_started = step.now
    if policy is not None and driver.can_retry(model, step.now):
        delay = policy.delay(model.attempts + 1, previous=model.last_delay)
        model.last_delay = delay
        step.retry_delay = delay
    else:
        step.give_up = True


def _entered_reconnecting(event: Any) -> None:
    # Only ERROR leads here (a connection born RECONNECTING is started, not entered), and
    # entering ERROR started the outage.
    model: Lifecycle = event.model
    model.attempts += 1
    model.up_since = None


def _entered_disconnected(event: Any) -> None:
    event.model.up_since = None


_ON_ENTER: Final[Mapping[ConnectionState, Callable[[Any], None]]] = {
    ConnectionState.CONNECTED: _entered_connected,
    ConnectionState.ERROR: _entered_error,
    ConnectionState.RECONNECTING: _entered_reconnecting,
    ConnectionState.DISCONNECTED: _entered_disconnected,
}


# -- the choke point ---------------------------------------------------------------------


def _record(event: Any) -> None:
    """Every real change passes here: stamp the time, log, queue the notification."""
    model: Lifecycle = event.model
    step = _step(event)
    old = ConnectionState[event.transition.source]
    model.changed_at = step.now
    model.reason = step.reason
    step.changes.append((old, model.state, step.reason))
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%r: %s -> %s (%s)", model, old.name, model.state.name, step.reason)


def _build_machine(rules: tuple[Rule, ...]) -> Machine:
    states = [
        State(s, on_enter=[_ON_ENTER[s]] if s in _ON_ENTER else None) for s in ConnectionState
    ]
    transitions = [
        {
            "trigger": rule.trigger,
            "source": [s for s in rule.sources if s is not None],
            "dest": rule.dest,
            "conditions": [GUARDS[name] for name in rule.conditions],
            "unless": [GUARDS[name] for name in rule.unless],
        }
        for rule in rules
        if any(s is not None for s in rule.sources)
    ]
    return Machine(
        model=None,
        states=states,
        initial=None,
        transitions=transitions,
        auto_transitions=False,
        send_event=True,
        after_state_change=[_record],
    )


_MACHINE: Final = _build_machine(TABLE)
_EVENTS: Final = _MACHINE.events
_PAIRS: Final = rules_by_pair()
_BIRTHS: Final = births()
_DESTS: Final = {rule.trigger: rule.dest for rule in TABLE}


class FleetMachine:
    """Drives any number of ``Lifecycle`` objects through the shared machine.

    One per manager: it holds what is shared by that manager's connections (the clock, the
    default retry policy, where notifications and retry requests go) so the lifecycles do
    not have to. It does no I/O and starts nothing: ``on_change`` and ``on_retry`` are called
    after each transition has finished, and only record what the manager must do.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        retry_policy: RetryPolicy | None = None,
        on_change: StateChangeHook | None = None,
        on_retry: RetryHook | None = None,
    ) -> None:
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.retry_policy = retry_policy
        self._on_change = on_change
        self._on_retry = on_retry

    # -- queries -------------------------------------------------------------------------

    def policy_of(self, model: Lifecycle) -> RetryPolicy | None:
        """The policy that governs ``model``: its own, else the machine's default."""
        return model.retry_policy if model.retry_policy is not None else self.retry_policy

    def can_retry(self, model: Lifecycle, now: float | None = None) -> bool:
        """The ``can_retry`` guard: a policy is set, attempts remain, the budget is not spent."""
        policy = self.policy_of(model)
        if policy is None:
            return False
        if now is None:
            now = self.clock.now()
        elapsed = None if model.outage_started is None else now - model.outage_started
        return policy.can_retry(model.attempts, elapsed)

    def timestamp(self, model: Lifecycle) -> datetime:
        """Wall time (aware, UTC) of ``model``'s last real change."""
        return self.clock.to_datetime(model.changed_at)

    # -- changes -------------------------------------------------------------------------

    def start(
        self,
        model: Lifecycle,
        initial: ConnectionState = C,
        reason: str | None = None,
    ) -> StateChange:
        """Give a new connection its first state, as a ``NEW`` row of the table allows."""
        rule = _BIRTHS.get(initial)
        if rule is None:
            raise InvalidTransition(None, initial, "a connection cannot start in this state")
        now = self.clock.now()
        model.state = initial
        model.changed_at = now
        model.reason = reason if reason is not None else rule.why
        if initial is C:
            model.up_since = now
        change = StateChange(model, None, initial, self.clock.to_datetime(now), model.reason)
        logger.debug("%r: new -> %s (%s)", model, initial.name, model.reason)
        if self._on_change is not None:
            self._on_change(change)
        return change

    def request(
        self, model: Lifecycle, target: ConnectionState, reason: str | None = None
    ) -> tuple[StateChange, ...]:
        """Move ``model`` to ``target`` now, or raise ``InvalidTransition`` changing nothing.

        Returns the changes made, in order: none when ``model`` is already in ``target``; two
        when it entered ERROR with no retry left and so went on to DISCONNECTED.
        """
        source = model.state
        if source is target:
            return ()
        rules = _PAIRS.get((source, target))
        if rules is None:
            raise InvalidTransition(source, target)
        step = _Step(self, self.clock.now(), reason)
        for rule in rules:
            if _EVENTS[rule.trigger].trigger(model, step):
                return self._finish(model, step)
        raise InvalidTransition(source, target, self._refusal(model, step.now))

    def fire(
        self, model: Lifecycle, trigger: str, reason: str | None = None
    ) -> tuple[StateChange, ...]:
        """Fire a trigger of the table by name; refused like ``request`` when it does not apply."""
        event = _EVENTS.get(trigger)
        if event is None:
            raise ValueError(f"trigger: no row of the table is named {trigger!r}")
        source = model.state
        dest = _DESTS[trigger]
        if source.name not in event.transitions:
            raise InvalidTransition(source, dest, f"{trigger!r} does not apply to {source.name}")
        step = _Step(self, self.clock.now(), reason)
        if event.trigger(model, step):
            return self._finish(model, step)
        raise InvalidTransition(source, dest, self._refusal(model, step.now))

    def retry_due(self, model: Lifecycle) -> tuple[StateChange, ...]:
        """The delay asked for by ``on_retry`` has passed: retry, or give up if it is too late.

        The guard is evaluated again now, because the time budget may have run out while the
        connection waited; then the connection gives up rather than staying in ERROR forever.
        Does nothing unless ``model`` is still in ERROR (its owner may have stopped it).
        """
        if model.state is not E:
            return ()
        step = _Step(self, self.clock.now(), "retrying")
        if not _EVENTS["retry"].trigger(model, step):
            step.reason = self._refusal(model, step.now)
            _EVENTS["give_up"].trigger(model, step)
        return self._finish(model, step)

    def _finish(self, model: Lifecycle, step: _Step) -> tuple[StateChange, ...]:
        if step.give_up:
            step.give_up = False
            step.reason = self._refusal(model, step.now)
            _EVENTS["give_up"].trigger(model, step)
        at = self.clock.to_datetime(step.now)
        changes = tuple(
            StateChange(model, old, new, at, reason) for old, new, reason in step.changes
        )
        if self._on_change is not None:
            for change in changes:
                self._on_change(change)
        if step.retry_delay is not None and self._on_retry is not None:
            self._on_retry(model, step.retry_delay)
        return changes

    def _refusal(self, model: Lifecycle, now: float) -> str:
        """Why the ``can_retry`` guard said no; the only guard of the table."""
        policy = self.policy_of(model)
        if policy is None or policy.max_attempts == 0:
            return "no retry policy"  # a policy that allows no attempt is none at all
        if model.attempts >= policy.max_attempts:
            return f"retries exhausted ({model.attempts} of {policy.max_attempts} attempts)"
        return "retry time budget (max_elapsed) spent"
