"""Every (from, to) pair of the five states, allowed or refused, as the contract states it."""

from __future__ import annotations

import itertools

import pytest

from support import C, D, E, I, R
from wsfleet import ConnectionState, InvalidTransition, RetryPolicy, WsfleetError
from wsfleet.fsm import FleetMachine, Lifecycle, ManualClock

# Written out from the specification, not derived from the table under test.
ALLOWED = {
    (C, I), (I, C),
    (C, D), (I, D),
    (C, E), (I, E), (R, E),
    (E, R),
    (E, D),
    (R, C),
    (R, D),
}  # fmt: skip
SAME = {(s, s) for s in ConnectionState}
PAIRS = list(itertools.product(ConnectionState, repeat=2))
POLICY = RetryPolicy(max_attempts=3, base_delay=1.0, jitter=0.0)


def test_there_are_25_pairs_and_nine_are_refused() -> None:
    assert len(PAIRS) == 25
    assert len(set(PAIRS) - ALLOWED - SAME) == 9


def test_disconnected_is_final() -> None:
    assert [pair for pair in ALLOWED if pair[0] is D] == []


def put_in(state: ConnectionState) -> tuple[FleetMachine, Lifecycle, ManualClock]:
    """A lifecycle in ``state``, reached by legal moves, with retries available."""
    clock = ManualClock()
    machine = FleetMachine(clock=clock, retry_policy=POLICY)
    model = Lifecycle()
    if state is R:
        machine.start(model, R)
    else:
        machine.start(model, C)
        if state is not C:
            machine.request(model, state)
    clock.advance(5.0)
    assert model.state is state
    return machine, model, clock


def snapshot(model: Lifecycle) -> dict[str, object]:
    return {name: getattr(model, name) for name in Lifecycle.__slots__}


@pytest.mark.parametrize(("source", "target"), sorted(ALLOWED, key=str), ids=str)
def test_allowed_pair_moves_and_stamps_the_time(
    source: ConnectionState, target: ConnectionState
) -> None:
    machine, model, clock = put_in(source)
    changes = machine.request(model, target, reason="test")
    assert model.state is target
    assert [(c.old, c.new) for c in changes] == [(source, target)]
    assert model.changed_at == clock.now()
    assert changes[0].at == clock.to_datetime(clock.now())
    assert changes[0].reason == "test"


@pytest.mark.parametrize(
    ("source", "target"), sorted(set(PAIRS) - ALLOWED - SAME, key=str), ids=str
)
def test_refused_pair_raises_and_changes_nothing(
    source: ConnectionState, target: ConnectionState
) -> None:
    machine, model, _ = put_in(source)
    before = snapshot(model)
    with pytest.raises(InvalidTransition) as info:
        machine.request(model, target)
    assert snapshot(model) == before
    assert (info.value.state, info.value.target) == (source, target)
    assert isinstance(info.value, WsfleetError)
    assert isinstance(info.value, ValueError)
    assert source.name in str(info.value)
    assert target.name in str(info.value)


@pytest.mark.parametrize("state", list(ConnectionState), ids=str)
def test_same_state_is_allowed_and_does_nothing(state: ConnectionState) -> None:
    machine, model, _ = put_in(state)
    before = snapshot(model)
    assert machine.request(model, state) == ()  # no change, so nothing for the owner to do
    assert snapshot(model) == before


@pytest.mark.parametrize("source", [E], ids=str)
def test_guarded_retry_is_refused_without_a_policy_and_changes_nothing(
    source: ConnectionState,
) -> None:
    machine, model, _ = put_in(source)
    machine.retry_policy = None
    before = snapshot(model)
    with pytest.raises(InvalidTransition, match="no retry policy") as info:
        machine.request(model, R)
    assert info.value.reason == "no retry policy"
    assert snapshot(model) == before
