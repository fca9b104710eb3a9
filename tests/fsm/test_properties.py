"""Random sequences of requests, retries and clock moves against a model read off the table."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from support import C, D, E, R
from wsfleet import TABLE, ConnectionState, InvalidTransition, RetryPolicy
from wsfleet.fsm import FleetMachine, Lifecycle, ManualClock, StateChange

pytestmark = pytest.mark.slow  # 200 random lifecycles of 40 steps

# The reference model: which pairs the table joins, and which of them are guarded.
TABLE_PAIRS = {(s, rule.dest) for rule in TABLE for s in rule.sources if s is not None}
GUARDED = {
    (s, rule.dest) for rule in TABLE for s in rule.sources if s is not None and rule.conditions
}

policies = st.one_of(
    st.none(),
    st.builds(
        RetryPolicy,
        max_attempts=st.integers(0, 4),
        base_delay=st.floats(0.0, 2.0),
        max_delay=st.just(10.0),
        jitter=st.floats(0.0, 1.0),
        max_elapsed=st.one_of(st.none(), st.floats(0.5, 20.0)),
        reset_after=st.one_of(st.none(), st.floats(0.0, 5.0)),
        seed=st.integers(0, 2**16),
    ),
)


class LifecycleMachine(RuleBasedStateMachine):
    @rule(policy=policies, dial=st.booleans())
    def new_connection(self, policy: RetryPolicy | None, dial: bool) -> None:
        self.clock = ManualClock()
        self.changes: list[StateChange] = []
        self.retries: list[float] = []
        self.policy = policy
        self.machine = FleetMachine(clock=self.clock, retry_policy=policy)
        self.model = Lifecycle()
        self.changes.append(self.machine.start(self.model, R if dial else C))
        self.expected_state = self.model.state
        self.last_time = self.model.changed_at

    def started(self) -> bool:
        return hasattr(self, "model")

    def _keep(self, changes: tuple[StateChange, ...]) -> tuple[StateChange, ...]:
        """What the machine's owner gets back: the changes, and the retry they ask for."""
        self.changes.extend(changes)
        self.retries.extend(c.retry_in for c in changes if c.retry_in is not None)
        return changes

    @precondition(started)
    @rule(seconds=st.floats(0.0, 30.0))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(started)
    @rule(target_state=st.sampled_from(list(ConnectionState)))
    def request(self, target_state: ConnectionState) -> None:
        source = self.model.state
        could_retry = self.machine.can_retry(self.model)
        retries_before = len(self.retries)
        try:
            changes = self._keep(self.machine.request(self.model, target_state))
        except InvalidTransition:
            assert source is not target_state
            assert (source, target_state) not in TABLE_PAIRS or (
                (source, target_state) in GUARDED and not could_retry
            )
            assert self.model.state is source
            return
        if source is target_state:
            assert changes == ()
            return
        assert (source, target_state) in TABLE_PAIRS
        assert changes[0].old is source
        assert changes[0].new is target_state
        if target_state is E and len(changes) == 1:
            assert len(self.retries) == retries_before + 1  # a retry was asked for
        if len(changes) == 2:
            assert (changes[1].old, changes[1].new) == (E, D)
            assert len(self.retries) == retries_before

    @precondition(lambda self: self.started() and self.model.state is E)
    @rule()
    def scheduled_retry_fires(self) -> None:
        could_retry = self.machine.can_retry(self.model)
        changes = self._keep(self.machine.retry_due(self.model))
        assert [c.new for c in changes] == [R if could_retry else D]

    @precondition(lambda self: self.started() and self.model.state is R)
    @rule(succeeds=st.booleans())
    def attempt_ends(self, succeeds: bool) -> None:
        self._keep(self.machine.request(self.model, C if succeeds else E))

    @invariant()
    def attempts_never_exceed_the_policy(self) -> None:
        if self.started():
            policy = self.policy
            assert self.model.attempts <= (policy.max_attempts if policy else 0)

    @invariant()
    def an_error_always_has_a_retry_pending(self) -> None:
        # exhaustion always ends in DISCONNECTED: ERROR is only kept while a retry is due
        if self.started() and self.model.state is E:
            assert self.retries
            assert self.policy is not None

    @invariant()
    def notifications_chain_once_per_real_change(self) -> None:
        if self.started():
            for before, after in zip(self.changes, self.changes[1:], strict=False):
                assert after.old is before.new
                assert after.old is not after.new
            assert self.changes[-1].new is self.model.state

    @invariant()
    def timestamps_are_monotone(self) -> None:
        if self.started():
            assert self.model.changed_at >= self.last_time
            self.last_time = self.model.changed_at
            stamps = [c.at for c in self.changes]
            assert stamps == sorted(stamps)


LifecycleMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40)
test_lifecycle = LifecycleMachine.TestCase
