"""Presence across the fleet: who is online, in which groups, with which metadata, and
the events that say when that changes.

The answers join two sources: this node's registry (its identifiers, their groups) with
the metadata registered here, and, with a backplane, the view of the other nodes
(``Remote``: the backplane's ``ClusterView``). Queries cost the size of their answer.

Events are derived, not relayed. Every manager that has a presence callback keeps, for
each identity online in the fleet, what it last reported of it (its groups and metadata);
the registry and the view tell it which identities changed (``mark``, O(1)), and one task
compares those with what they are now (``settle``) and reports the difference: online,
join, leave, offline. So each manager observes each change of the fleet once, whichever
node it happened on, and nothing crosses the wire for events. Two properties follow:

* one event per identity per change, not per socket nor per node: a second tab, or the
  identity arriving on a second node, changes nothing fleet-wide and reports nothing;
* no flap: a session held for its client to resume keeps its identity online, and what
  changes within one step of the event loop (a node's record reloaded whole) is compared
  once, after the step.

Tracking starts with the first callback (what is online then is the baseline, not
reported); a manager with none pays one attribute check per change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import anyio
from anyio.lowlevel import checkpoint

from ..presence import PresenceEvent, PresenceKind
from .callbacks import CallbackHandle, Callbacks
from .registry import Registry

__all__ = ["Presence", "Remote"]

logger = logging.getLogger("wsfleet")

#: An identity as last reported: its groups and its metadata.
_State = tuple[frozenset[str], dict[str, Any]]


class Remote(Protocol):
    """The other nodes of the fleet, as this node knows them (``ClusterView``)."""

    watch: Callable[[str, str], None] | None

    def presence(self, identifier: str) -> set[str]:
        """The other nodes where ``identifier`` has sockets."""

    def groups_of(self, identifier: str) -> set[str]: ...

    def members(self, group: str) -> set[str]: ...

    def identifiers(self) -> set[str]: ...

    def meta_of(self, identifier: str) -> dict[str, Any] | None:
        """``identifier``'s metadata as another node registered it; ``None``: none."""


class Presence:
    """Fleet-wide presence: queries, local metadata and the events (module docstring)."""

    __slots__ = ("_dirty", "_known", "_registry", "_wake", "callbacks", "metas", "node", "remote")

    def __init__(self, registry: Registry, callback_timeout: float) -> None:
        self._registry = registry
        registry.watch = self.mark
        #: The other nodes; ``None`` without a backplane.
        self.remote: Remote | None = None
        #: This node's name in events and ``nodes_of``.
        self.node = "local"
        #: Metadata registered here, for the identifiers with sockets here that have some.
        self.metas: dict[str, dict[str, Any]] = {}
        self.callbacks = Callbacks(callback_timeout, label="presence", single=True)
        #: identifier -> what was last reported of it; ``None`` until the first callback.
        self._known: dict[str, _State] | None = None
        #: identifier -> the first and the last node a change of it came from since the last
        #: settle (whom the events name: see ``_events``).
        self._dirty: dict[str, tuple[str, str]] = {}
        self._wake: anyio.Event | None = None

    def attach(self, remote: Remote, node: str) -> None:
        """Follow the other nodes too (the manager's backplane)."""
        self.remote = remote
        self.node = node
        remote.watch = self.mark

    # -- queries ---------------------------------------------------------------------------

    def online(self, identifier: str) -> bool:
        if identifier in self._registry.by_identifier:
            return True
        return self.remote is not None and bool(self.remote.presence(identifier))

    def nodes_of(self, identifier: str) -> set[str]:
        """The nodes where ``identifier`` has sockets, this one included."""
        nodes = {self.node} if identifier in self._registry.by_identifier else set()
        if self.remote is not None:
            nodes |= self.remote.presence(identifier)
        return nodes

    def members(self, group: str) -> set[str]:
        members = set(self._registry.groups.get(group, ()))
        if self.remote is not None:
            members |= self.remote.members(group)
        return members

    def groups_of(self, identifier: str) -> set[str]:
        groups = set(self._registry.memberships.get(identifier, ()))
        if self.remote is not None:
            groups |= self.remote.groups_of(identifier)
        return groups

    def count(self) -> int:
        """Identifiers online anywhere in the fleet."""
        here = self._registry.by_identifier
        if self.remote is None:
            return len(here)
        return len(set(here) | self.remote.identifiers())

    def meta_of(self, identifier: str) -> dict[str, Any]:
        """The metadata registered here, else another node's (a copy; empty if none)."""
        meta = self.metas.get(identifier)
        if meta is None and self.remote is not None:
            meta = self.remote.meta_of(identifier)
        return {} if meta is None else dict(meta)

    def of_group(self, group: str) -> dict[str, dict[str, Any]]:
        """``{identifier: meta}`` for every member of ``group`` in the fleet."""
        return {identifier: self.meta_of(identifier) for identifier in sorted(self.members(group))}

    # -- metadata registered here ----------------------------------------------------------

    def registered(self, identifier: str, meta: dict[str, Any] | None) -> bool:
        """A socket of ``identifier`` registered here with ``meta`` (checked already;
        ``None``: it gave none, the identity keeps what it has). Whether the identity's
        metadata here changed (the other nodes are then told)."""
        if meta is None or self.metas.get(identifier) == meta:
            return False
        if meta:
            self.metas[identifier] = meta
        else:
            self.metas.pop(identifier, None)
        self.mark(identifier)
        return True

    def gone(self, identifier: str) -> None:
        """``identifier``'s last socket here is gone: so is the metadata registered here."""
        self.metas.pop(identifier, None)

    # -- events ----------------------------------------------------------------------------

    def subscribe(self, callback: Callable[..., Any]) -> CallbackHandle:
        """Report every change from now on to ``callback(event)``."""
        handle = self.callbacks.add(callback)
        if self._known is None:
            self._known = {}
            everyone = set(self._registry.by_identifier)
            if self.remote is not None:
                everyone |= self.remote.identifiers()
            for identifier in everyone:
                state = self._state(identifier)
                if state is not None:
                    self._known[identifier] = state
        return handle

    def mark(self, identifier: str, node: str | None = None) -> None:
        """``identifier`` may have changed (on ``node``; ``None``: here): compare it at the
        next settle. O(1); nothing at all while nobody listens."""
        if self._known is None:
            return
        where = self.node if node is None else node
        seen = self._dirty.get(identifier)
        self._dirty[identifier] = (where, where) if seen is None else (seen[0], where)
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()

    def _state(self, identifier: str) -> _State | None:
        """What the fleet holds of ``identifier`` now; ``None`` if it is offline."""
        if not self.online(identifier):
            return None
        return frozenset(self.groups_of(identifier)), self.meta_of(identifier)

    def settle(self) -> None:
        """Report what changed for the identities marked since the last settle."""
        known = self._known
        if known is None or not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        publish = self.callbacks.publish
        for identifier, nodes in dirty.items():
            before = known.get(identifier)
            after = self._state(identifier)
            if after is None:
                known.pop(identifier, None)
            else:
                known[identifier] = after
            for event in _events(identifier, nodes, before, after):
                publish(event, None)

    async def run(self) -> None:
        """Settle after each step that marked something, and run the callbacks' lanes,
        until cancelled (a task of the manager's)."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.callbacks.run, name="wsfleet presence callbacks")
            while True:
                self._wake = wake = anyio.Event()
                if not self._dirty:
                    await wake.wait()
                self.settle()
                await checkpoint()

    async def wait_idle(self) -> None:
        """Report what is marked, then wait for the callbacks to have seen it (bound it)."""
        self.settle()
        await self.callbacks.wait_idle()


def _events(
    identifier: str, nodes: tuple[str, str], before: _State | None, after: _State | None
) -> list[PresenceEvent]:
    """The events that take an identity from ``before`` to ``after`` (``None``: offline).

    ``nodes``: the first and the last node a change came from. Going offline is the last
    one's doing (its last socket went there); anything else the first one's: a join or
    leave on another node reaches the view before this node's registry follows it
    (``mirror``), and an identity comes online where its first socket registered.
    """
    events: list[PresenceEvent] = []
    node = nodes[1] if after is None else nodes[0]

    def event(kind: PresenceKind, group: str | None, meta: dict[str, Any]) -> None:
        events.append(PresenceEvent(kind, identifier, group, dict(meta), node))

    old_groups = before[0] if before is not None else frozenset()
    new_groups = after[0] if after is not None else frozenset()
    if before is None and after is not None:
        event("online", None, after[1])
    meta = after[1] if after is not None else before[1] if before is not None else {}
    for group in sorted(new_groups - old_groups):
        event("join", group, meta)
    for group in sorted(old_groups - new_groups):
        event("leave", group, meta)
    if before is not None and after is None:
        event("offline", None, before[1])
    return events
