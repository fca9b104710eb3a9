"""The lifecycle rules beyond the table: births, retries, give-up, resets, budgets, hooks."""

from __future__ import annotations

import logging
from datetime import UTC

import pytest

from support import C, D, E, I, R
from wsfleet import ConnectionState, InvalidTransition, RetryPolicy
from wsfleet.fsm import FleetMachine, Lifecycle, ManualClock, MonotonicClock, StateChange

EXACT = RetryPolicy(max_attempts=3, base_delay=1.0, backoff_multiplier=2.0, jitter=0.0)


class RecordingMachine(FleetMachine):
    """A machine that keeps every change it returns, and every retry those changes ask for."""

    def __init__(self, *, clock: ManualClock, retry_policy: RetryPolicy | None) -> None:
        super().__init__(clock=clock, retry_policy=retry_policy)
        self.changes: list[StateChange] = []
        self.retries: list[tuple[Lifecycle, float]] = []

    def _keep(self, changes: tuple[StateChange, ...]) -> tuple[StateChange, ...]:
        self.changes.extend(changes)
        self.retries.extend((c.connection, c.retry_in) for c in changes if c.retry_in is not None)
        return changes

    def start(self, model: Lifecycle, initial: ConnectionState = C, reason: str | None = None):  # type: ignore[no-untyped-def]
        change = super().start(model, initial, reason)
        self._keep((change,))
        return change

    def request(self, model: Lifecycle, target: ConnectionState, reason: str | None = None):  # type: ignore[no-untyped-def]
        return self._keep(super().request(model, target, reason))

    def fire(self, model: Lifecycle, trigger: str, reason: str | None = None):  # type: ignore[no-untyped-def]
        return self._keep(super().fire(model, trigger, reason))

    def retry_due(self, model: Lifecycle):  # type: ignore[no-untyped-def]
        return self._keep(super().retry_due(model))


class Recorder:
    """Collects what the machine tells its owner to do: the changes and their retries."""

    def __init__(self) -> None:
        self.changes: list[StateChange] = []
        self.retries: list[tuple[Lifecycle, float]] = []

    def machine(self, clock: ManualClock, policy: RetryPolicy | None = EXACT) -> FleetMachine:
        machine = RecordingMachine(clock=clock, retry_policy=policy)
        machine.changes = self.changes
        machine.retries = self.retries
        return machine


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def test_a_connection_is_born_connected_or_dialling(clock: ManualClock, rec: Recorder) -> None:
    machine = rec.machine(clock)
    inbound, outbound = Lifecycle(), Lifecycle()
    born = machine.start(inbound)
    machine.start(outbound, R)
    assert (inbound.state, outbound.state) == (C, R)
    assert (born.old, born.new, born.connection) == (None, C, inbound)
    assert [c.new for c in rec.changes] == [C, R]


@pytest.mark.parametrize("state", [E, I, D], ids=str)
def test_a_connection_cannot_be_born_in_other_states(
    clock: ManualClock, rec: Recorder, state: ConnectionState
) -> None:
    model = Lifecycle()
    with pytest.raises(InvalidTransition) as info:
        rec.machine(clock).start(model, state)
    assert info.value.state is None
    assert "new" in str(info.value)
    assert rec.changes == []


def test_error_without_a_policy_gives_up_at_once(clock: ManualClock, rec: Recorder) -> None:
    machine = rec.machine(clock, policy=None)
    model = Lifecycle()
    machine.start(model)
    changes = machine.request(model, E, reason="abnormal close")
    assert [(c.old, c.new, c.reason) for c in changes] == [
        (C, E, "abnormal close"),
        (E, D, "no retry policy"),
    ]
    assert model.state is D
    assert rec.retries == []


def test_error_with_attempts_left_asks_for_a_retry_after_the_policy_delay(
    clock: ManualClock, rec: Recorder
) -> None:
    machine = rec.machine(clock)
    model = Lifecycle()
    machine.start(model)
    machine.request(model, E)
    assert model.state is E
    assert rec.retries == [(model, 1.0)]
    machine.request(model, R)
    assert model.attempts == 1


def test_failed_attempts_back_off_then_exhaustion_ends_disconnected(
    clock: ManualClock, rec: Recorder
) -> None:
    machine = rec.machine(clock)
    model = Lifecycle()
    machine.start(model, R)
    for _ in range(3):
        machine.request(model, E, reason="refused")
        machine.request(model, R)
    assert [delay for _, delay in rec.retries] == [1.0, 2.0, 4.0]
    assert model.attempts == 3
    changes = machine.request(model, E, reason="refused")
    assert model.state is D
    assert changes[-1].reason == "retries exhausted (3 of 3 attempts)"
    with pytest.raises(InvalidTransition, match="not in the transition table"):
        machine.request(model, R)  # DISCONNECTED is final


def test_success_resets_the_attempts_when_reset_after_is_unset(
    clock: ManualClock, rec: Recorder
) -> None:
    machine = rec.machine(clock)
    model = Lifecycle()
    machine.start(model, R)
    machine.request(model, E)
    machine.request(model, R)
    machine.request(model, C)
    assert (model.attempts, model.outage_started, model.last_delay) == (0, None, None)


def test_reset_after_keeps_backing_off_a_connection_dropped_at_once(
    clock: ManualClock, rec: Recorder
) -> None:
    policy = RetryPolicy(max_attempts=5, base_delay=1.0, jitter=0.0, reset_after=10.0)
    machine = rec.machine(clock, policy)
    model = Lifecycle()
    machine.start(model, R)
    machine.request(model, E)
    machine.request(model, R)
    machine.request(model, C)
    assert model.attempts == 1  # not yet earned
    clock.advance(1.0)
    machine.request(model, E)  # accepted, then dropped after 1 s
    assert rec.retries[-1][1] == 2.0
    machine.request(model, R)
    machine.request(model, C)
    clock.advance(10.0)
    machine.request(model, I)  # idle still counts as up
    machine.request(model, E)  # up for 10 s: a fresh start
    assert rec.retries[-1][1] == 1.0
    assert model.attempts == 0


def test_max_elapsed_budget_stops_retrying(clock: ManualClock, rec: Recorder) -> None:
    policy = RetryPolicy(max_attempts=100, base_delay=1.0, jitter=0.0, max_elapsed=5.0)
    machine = rec.machine(clock, policy)
    model = Lifecycle()
    machine.start(model)
    machine.request(model, E)
    machine.request(model, R)
    clock.advance(5.0)
    changes = machine.request(model, E)
    assert model.state is D
    assert changes[-1].reason == "retry time budget (max_elapsed) spent"


def test_a_connection_policy_overrides_the_default(clock: ManualClock, rec: Recorder) -> None:
    machine = rec.machine(clock, policy=None)
    model = Lifecycle(retry_policy=RetryPolicy(max_attempts=1, base_delay=0.5, jitter=0.0))
    machine.start(model)
    machine.request(model, E)
    assert model.state is E
    assert rec.retries == [(model, 0.5)]


def test_stop_leaves_error_even_with_retries_left(clock: ManualClock, rec: Recorder) -> None:
    machine = rec.machine(clock)
    model = Lifecycle()
    machine.start(model)
    machine.request(model, E)
    changes = machine.request(model, D, reason="unregistered")
    assert [(c.old, c.new, c.reason) for c in changes] == [(E, D, "unregistered")]


def test_the_changes_come_back_once_the_request_is_over(clock: ManualClock) -> None:
    """The machine calls nobody: its owner gets every change, the give-up included, after
    the last transition, and applies their effects itself."""
    model = Lifecycle()
    machine = FleetMachine(clock=clock)
    born = machine.start(model)
    changes = machine.request(model, E)
    assert model.state is D  # by the time the owner sees the first change, all is done
    assert [(c.old, c.new) for c in (born, *changes)] == [(None, C), (C, E), (E, D)]
    assert [c.retry_in for c in changes] == [None, None]  # no policy: no retry to schedule


def test_a_change_into_error_carries_the_retry_delay(clock: ManualClock) -> None:
    model = Lifecycle()
    machine = FleetMachine(clock=clock, retry_policy=EXACT)
    machine.start(model)
    (failed,) = machine.request(model, E)
    assert failed.retry_in == 1.0
    (retrying,) = machine.retry_due(model)
    assert retrying.new is R
    assert retrying.retry_in is None


def test_fire_runs_a_named_trigger(clock: ManualClock, rec: Recorder) -> None:
    machine = rec.machine(clock)
    model = Lifecycle()
    machine.start(model)
    assert [c.new for c in machine.fire(model, "go_idle")] == [I]
    assert [c.new for c in machine.fire(model, "activity", reason="pong")] == [C]
    assert model.reason == "pong"


def test_fire_refuses_unknown_and_inapplicable_triggers(clock: ManualClock, rec: Recorder) -> None:
    machine = rec.machine(clock, policy=None)
    model = Lifecycle()
    machine.start(model)
    with pytest.raises(ValueError, match="no row of the table is named 'explode'"):
        machine.fire(model, "explode")
    with pytest.raises(InvalidTransition, match="'retry' does not apply to CONNECTED"):
        machine.fire(model, "retry")
    machine.request(model, E)
    assert model.state is D  # no policy: it gave up at once, and DISCONNECTED is final
    with pytest.raises(InvalidTransition, match="'retry' does not apply to DISCONNECTED") as info:
        machine.fire(model, "retry")
    assert info.value.target is R
    assert model.state is D


def test_timestamps_are_aware_utc_and_move_only_on_real_changes(
    clock: ManualClock, rec: Recorder
) -> None:
    machine = rec.machine(clock)
    model = Lifecycle()
    machine.start(model)
    first = machine.timestamp(model)
    assert first.tzinfo is UTC
    clock.advance(3.0)
    machine.request(model, C)
    assert machine.timestamp(model) == first
    machine.request(model, I)
    assert (machine.timestamp(model) - first).total_seconds() == 3.0


def test_can_retry_reads_the_clock_when_not_told_the_time(clock: ManualClock) -> None:
    machine = FleetMachine(clock=clock, retry_policy=EXACT)
    assert machine.can_retry(Lifecycle())
    assert not FleetMachine(clock=clock).can_retry(Lifecycle())


def test_monotonic_clock_maps_to_wall_time() -> None:
    ticks = iter([100.0, 100.0, 101.5])
    clock = MonotonicClock(lambda: next(ticks))
    start = clock.to_datetime(clock.now())
    assert start.tzinfo is UTC
    assert (clock.to_datetime(clock.now()) - start).total_seconds() == 1.5


def test_the_default_clock_is_the_system_monotonic_clock() -> None:
    assert FleetMachine().clock.now() > 0


def test_manual_clock_cannot_go_backwards() -> None:
    with pytest.raises(ValueError, match="backwards"):
        ManualClock().advance(-1)


def test_a_due_retry_gives_up_when_the_budget_ran_out_meanwhile(
    clock: ManualClock, rec: Recorder
) -> None:
    policy = RetryPolicy(max_attempts=9, base_delay=10.0, jitter=0.0, max_elapsed=5.0)
    machine = rec.machine(clock, policy)
    model = Lifecycle()
    machine.start(model)
    machine.request(model, E)
    clock.advance(10.0)
    changes = machine.retry_due(model)
    assert [(c.old, c.new, c.reason) for c in changes] == [
        (E, D, "retry time budget (max_elapsed) spent")
    ]
    assert machine.retry_due(model) == ()  # no longer in ERROR: nothing to do


def test_a_due_retry_moves_to_reconnecting(clock: ManualClock, rec: Recorder) -> None:
    machine = rec.machine(clock)
    model = Lifecycle()
    machine.start(model)
    machine.request(model, E)
    assert [c.new for c in machine.retry_due(model)] == [R]
    assert model.attempts == 1


def test_every_change_is_logged_at_debug_under_the_wsfleet_logger(
    clock: ManualClock, rec: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    machine = rec.machine(clock)
    model = Lifecycle()
    with caplog.at_level(logging.DEBUG, logger="wsfleet"):
        machine.start(model)
        machine.request(model, I, reason="quiet")
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("wsfleet")]
    assert any("new -> CONNECTED" in m for m in messages)
    assert any("CONNECTED -> IDLE (quiet)" in m for m in messages)


def test_fire_refuses_a_row_whose_guard_says_no(clock: ManualClock, rec: Recorder) -> None:
    machine = rec.machine(clock)
    model = Lifecycle()
    machine.start(model)
    machine.request(model, E)  # a retry is due later: the connection waits in ERROR
    model.retry_policy = RetryPolicy(max_attempts=0)  # then it may not retry after all
    with pytest.raises(InvalidTransition, match="no retry policy") as info:
        machine.fire(model, "retry")
    assert info.value.target is ConnectionState.RECONNECTING
    assert model.state is E


def test_the_state_machine_library_is_kept_quiet_unless_the_application_chose() -> None:
    from wsfleet.fsm.machine import quiet_library_logger

    unset = logging.getLogger("wsfleet-test.unset")
    chosen = logging.getLogger("wsfleet-test.chosen")
    chosen.setLevel(logging.INFO)
    quiet_library_logger(unset)
    quiet_library_logger(chosen)
    assert unset.level == logging.WARNING
    assert chosen.level == logging.INFO
    assert logging.getLogger("transitions").getEffectiveLevel() >= logging.WARNING
