"""The manager against a plain-dict model, driven by hypothesis' stateful testing.

Hypothesis runs the rules synchronously; each one drives the real manager, running in an
event loop behind an anyio blocking portal, on asyncio and on trio. After every step the
membership, counts, states, deliveries, drops and state-change callbacks must agree with the
model. The model's legal moves come from the transition table itself, so the test follows the
table as the manager does; a retry policy whose delay never elapses during a run makes ERROR
and RECONNECTING reachable and stable, so messages queued while a connection is down can be
followed to their delivery after it comes back.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal
from anyio.lowlevel import checkpoint
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from support import C, D, E, I, R
from wsfleet import (
    AlreadyRegistered,
    ConnectionManager,
    ConnectionState,
    InvalidTransition,
    RetryPolicy,
    UnknownIdentifier,
    UnknownSocket,
    WsfleetError,
)
from wsfleet.fsm.table import Rule, rules_by_pair
from wsfleet.testing import MemoryTransport

WRITABLE = (C, I)

MAX_ATTEMPTS = 2
#: Retries are allowed but never fall due during a run: only the rules move connections.
POLICY = RetryPolicy(max_attempts=MAX_ATTEMPTS, base_delay=3600, max_delay=3600, jitter=0)
PAIRS = rules_by_pair()

IDENTIFIERS = st.sampled_from(["ann", "bob", "cy"])
GROUPS = st.sampled_from(["red", "blue"])
MESSAGES = st.text(max_size=3) | st.binary(max_size=3)
BAD_NAMES = st.sampled_from(["", "x" * 257, None, 3, b"ann"])

Change = tuple[int, ConnectionState | None, ConnectionState]


class Refused(Exception):
    """The model says the table refuses this change."""


@dataclass
class Entry:
    """What the model knows of one registered socket."""

    socket: MemoryTransport
    identifier: str
    state: ConnectionState = C
    attempts: int = 0
    queued: list[str | bytes] = field(default_factory=list)


class ManagerMachine(RuleBasedStateMachine):
    backend = "asyncio"
    sockets = Bundle("sockets")

    def __init__(self) -> None:
        super().__init__()
        self._stack = ExitStack()
        self.portal = self._stack.enter_context(start_blocking_portal(self.backend))
        self.manager = ConnectionManager(retry_policy=POLICY)
        self._stack.enter_context(self.portal.wrap_async_context_manager(self.manager))
        self.seen: list[Change] = []
        self.portal.call(self.manager.on_state_change, self._seen)
        # The model.
        self.live: dict[int, Entry] = {}
        self.groups: dict[str, set[str]] = {}
        self.delivered: dict[int, list[str | bytes]] = {}
        self.known: list[MemoryTransport] = []
        self.changes: list[Change] = []
        self.dropped = 0

    def _seen(self, socket: object, old: ConnectionState | None, new: ConnectionState) -> None:
        self.seen.append((id(socket), old, new))

    def teardown(self) -> None:
        self._stack.close()

    def call(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``func`` (sync or async) in the manager's event loop."""
        return self.portal.call(partial(func, *args, **kwargs))

    # -- model helpers ----------------------------------------------------------------

    def identifiers(self) -> set[str]:
        return {e.identifier for e in self.live.values()}

    def _move(self, entry: Entry, new: ConnectionState) -> None:
        """Record a change and apply what entering ``new`` does to the model."""
        old = entry.state
        self.changes.append((id(entry.socket), old, new))
        entry.state = new
        if new is D:  # the end: it leaves the registry in the same change
            self.dropped += len(entry.queued)
            entry.queued.clear()
            self._leave(entry)
        elif new is C and entry.queued:
            self.delivered[id(entry.socket)].extend(entry.queued)
            entry.queued.clear()

    def _request(self, entry: Entry, target: ConnectionState) -> None:
        """What the table (and its one guard) says to ``entry -> target``."""
        source = entry.state
        if source is target:
            return
        can_retry = entry.attempts < MAX_ATTEMPTS

        def passes(rule: Rule) -> bool:
            return all(can_retry for _ in rule.conditions) and not any(
                can_retry for _ in rule.unless
            )

        if not any(passes(rule) for rule in PAIRS.get((source, target), ())):
            raise Refused
        # The per-state hooks: attempts count per outage; going down from up starts a new
        # outage and coming back up ends it.
        if target is R:
            entry.attempts += 1
        elif (target is E and source in WRITABLE) or (target is C and source is R):
            entry.attempts = 0
        self._move(entry, target)
        if target is E and entry.attempts >= MAX_ATTEMPTS:
            self._move(entry, D)  # no attempt left: it gives up at once

    def _forget(self, entry: Entry) -> None:
        self.dropped += len(entry.queued)
        entry.queued.clear()
        self.changes.append((id(entry.socket), entry.state, D))
        entry.state = D
        self._leave(entry)

    def _leave(self, entry: Entry) -> None:
        del self.live[id(entry.socket)]
        if entry.identifier not in self.identifiers():
            for group in list(self.groups):
                self.groups[group].discard(entry.identifier)
                if not self.groups[group]:
                    del self.groups[group]

    def _deliver(self, targets: list[Entry], message: str | bytes) -> int:
        count = 0
        for entry in targets:
            if entry.state is D:
                continue
            count += 1
            if entry.state in WRITABLE:
                self.delivered[id(entry.socket)].append(message)
            else:
                entry.queued.append(message)
        return count

    # -- rules ----------------------------------------------------------------------------

    @rule(target=sockets, identifier=IDENTIFIERS)
    def register(self, identifier: str) -> MemoryTransport:
        socket = MemoryTransport(f"s{len(self.known)}")
        self.known.append(socket)
        self.delivered[id(socket)] = []
        return self._register(socket, identifier)

    def _register(self, socket: MemoryTransport, identifier: str) -> MemoryTransport:
        conn = self.call(self.manager.register, socket, identifier)
        assert conn.state is C
        self.live[id(socket)] = Entry(socket, identifier)
        self.changes.append((id(socket), None, C))
        return socket

    @rule(socket=sockets, identifier=IDENTIFIERS)
    def register_again(self, socket: MemoryTransport, identifier: str) -> None:
        if id(socket) in self.live:
            with pytest.raises(AlreadyRegistered):
                self.call(self.manager.register, socket, identifier)
        else:  # a socket that left may come back, as a new connection
            self._register(socket, identifier)

    @rule(identifier=BAD_NAMES)
    def register_with_a_bad_identifier(self, identifier: Any) -> None:
        with pytest.raises(WsfleetError):
            self.call(self.manager.register, MemoryTransport("refused"), identifier)

    @rule(socket=sockets)
    def unregister(self, socket: MemoryTransport) -> None:
        entry = self.live.get(id(socket))
        assert self.call(self.manager.unregister, socket) is (entry is not None)
        if entry is not None:
            self._forget(entry)

    @rule()
    def clear(self) -> None:
        self.call(self.manager.clear)
        for entry in list(self.live.values()):
            self._forget(entry)

    @rule(identifier=IDENTIFIERS, group=GROUPS)
    def add_to_group(self, identifier: str, group: str) -> None:
        if identifier in self.identifiers():
            self.call(self.manager.add_to_group, identifier, group)
            self.groups.setdefault(group, set()).add(identifier)
        else:
            with pytest.raises(UnknownIdentifier):
                self.call(self.manager.add_to_group, identifier, group)

    @rule(identifier=IDENTIFIERS, group=GROUPS)
    def remove_from_group(self, identifier: str, group: str) -> None:
        # Idempotent: an identifier with no socket left is in no group, so there is nothing
        # to do (its cleanup may have raced the application's "leave").
        self.call(self.manager.remove_from_group, identifier, group)
        members = self.groups.get(group)
        if members is not None:
            members.discard(identifier)
            if not members:
                del self.groups[group]

    @rule(message=MESSAGES, exclude=st.none() | IDENTIFIERS)
    def broadcast(self, message: str | bytes, exclude: str | None) -> None:
        targets = [e for e in self.live.values() if e.identifier != exclude]
        count = self.call(self.manager.broadcast, message, exclude=exclude)
        assert count == self._deliver(targets, message)

    @rule(message=MESSAGES, identifier=IDENTIFIERS)
    def send_to_one(self, message: str | bytes, identifier: str) -> None:
        targets = [e for e in self.live.values() if e.identifier == identifier]
        count = self.call(self.manager.send_to_one, identifier, message)
        assert count == self._deliver(targets, message)

    @rule(message=MESSAGES, identifiers=st.lists(IDENTIFIERS, max_size=4))
    def send_to_many(self, message: str | bytes, identifiers: list[str]) -> None:
        targets = [e for e in self.live.values() if e.identifier in identifiers]
        count = self.call(self.manager.send_to_many, identifiers, message)
        assert count == self._deliver(targets, message)

    @rule(message=MESSAGES, group=GROUPS)
    def send_to_group(self, message: str | bytes, group: str) -> None:
        members = self.groups.get(group, set())
        targets = [e for e in self.live.values() if e.identifier in members]
        count = self.call(self.manager.send_to_group, group, message)
        assert count == self._deliver(targets, message)

    @rule(socket=sockets, state=st.sampled_from(ConnectionState))
    def set_state(self, socket: MemoryTransport, state: ConnectionState) -> None:
        entry = self.live.get(id(socket))
        if entry is None:
            with pytest.raises(UnknownSocket):
                self.call(self.manager.set_connection_state, socket, state)
            return
        try:
            self._request(entry, state)
        except Refused:
            with pytest.raises(InvalidTransition):
                self.call(self.manager.set_connection_state, socket, state)
        else:
            self.call(self.manager.set_connection_state, socket, state)

    # -- the invariant -------------------------------------------------------------------------

    async def _settle(self) -> None:
        # Transports here take batches at once: a few turns of the loop flush every queue and
        # run every callback.
        for _ in range(20):
            await checkpoint()

    @invariant()
    def manager_and_model_agree(self) -> None:
        self.portal.call(self._settle)
        manager, live = self.manager, self.live
        assert len(manager) == manager.count() == len(live)
        assert manager.identifiers() == self.identifiers()
        for identifier in ("ann", "bob", "cy"):
            mine = [e.socket for e in live.values() if e.identifier == identifier]
            assert manager.sockets_of(identifier) == mine
            groups = {g for g, members in self.groups.items() if identifier in members}
            assert manager.groups_of(identifier) == groups
        assert manager.groups() == set(self.groups)
        for group in ("red", "blue"):
            assert manager.get_group_members(group) == self.groups.get(group, set())
        for socket in self.known:
            entry = live.get(id(socket))
            assert manager.get_connection_state(socket) == (entry and entry.state)
            assert socket.received == self.delivered[id(socket)]
        for state in ConnectionState:
            ids = {id(s) for s in manager.connections_in_state(state)}
            assert ids == {key for key, e in live.items() if e.state is state}
        stats = manager.stats()
        assert stats.connections == len(live)
        assert stats.held == sum(e.state in (E, R) for e in live.values())
        assert stats.identifiers == len(self.identifiers())
        assert stats.groups == len(self.groups)
        assert stats.states == {
            s.name: sum(e.state is s for e in live.values()) for s in ConnectionState
        }
        assert stats.queued_messages == sum(len(e.queued) for e in live.values())
        assert stats.dropped == self.dropped
        assert stats.sent_messages == sum(len(d) for d in self.delivered.values())
        assert self.seen == self.changes


SETTINGS = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class ManagerOnAsyncio(ManagerMachine):
    backend = "asyncio"


class ManagerOnTrio(ManagerMachine):
    backend = "trio"


# Random runs of a whole manager on each loop: more than a few seconds each.
TestManagerOnAsyncio = pytest.mark.slow(ManagerOnAsyncio.TestCase)
TestManagerOnAsyncio.settings = SETTINGS
TestManagerOnTrio = pytest.mark.slow(ManagerOnTrio.TestCase)
TestManagerOnTrio.settings = SETTINGS
