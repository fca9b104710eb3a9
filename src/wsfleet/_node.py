"""This node as its backplane sees it, and what the backplane hears of this node.

The backplane never holds the manager: it gets a ``Node`` (``wsfleet.backplane.Node``) to
carry out what other nodes ask here (a fan-out, a membership change, a kick), and the runtime
gets a ``Membership`` to tell the backplane when an identifier comes and goes. Both are made
here, by the manager, over the runtime (``Fleet``) alone, so calls go one way: manager ->
backplane -> node interface -> runtime, never back into the manager.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVarTuple

from ._runtime.fleet import Fleet
from ._runtime.routing import Kind, targets
from .backplane import Backplane
from .transport import Message

__all__ = ["BackplaneMembership", "BackplaneNode", "attach"]

_Args = TypeVarTuple("_Args")


class BackplaneMembership:
    """Tells the backplane when an identifier comes to this node and when it leaves it."""

    __slots__ = ("_backplane",)

    def __init__(self, backplane: Backplane) -> None:
        self._backplane = backplane

    def online(self, identifier: str, meta: dict[str, Any] | None) -> Iterable[str]:
        groups = self._backplane.view.groups_of(identifier)
        self._backplane.membership("online", identifier, meta=meta)
        return groups

    def offline(self, identifier: str) -> None:
        self._backplane.membership("offline", identifier)


def attach(fleet: Fleet, backplane: Backplane) -> None:
    """Make ``fleet`` one node of ``backplane``'s fleet: it tells the backplane who comes
    and goes, and its presence answers for the other nodes too (from the view)."""
    fleet.membership = BackplaneMembership(backplane)
    fleet.presence.attach(backplane.view, backplane.node_id)


class BackplaneNode:
    """This node as its backplane sees it (``wsfleet.backplane.Node``): the runtime's
    sockets and groups, and nothing of the manager's."""

    __slots__ = ("_fleet", "_registry")

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._registry = fleet.registry

    def deliver(
        self, to: Kind, target: str | list[str] | None, message: Message, exclude: Sequence[str]
    ) -> int:
        """Carry out another node's fan-out on this node's sockets (never republished)."""
        fleet = self._fleet
        try:
            size = fleet.check_message(message)
        except ValueError:
            fleet.outbox.count_drop("backplane: too large here")
            return 0
        registry = self._registry
        skip: set[int] = set()
        for name in exclude:
            skip.update(id(c.socket) for c in registry.connections_of(name))
        return fleet.deliver(targets(registry, to, target, skip), message, size)

    def mirror(self, identifier: str, group: str, joined: bool) -> None:
        """Another node changed ``identifier``'s groups: follow, if it has sockets here."""
        registry = self._registry
        if identifier in registry.by_identifier:
            if joined:
                registry.join(identifier, group)
            else:
                registry.leave(identifier, group)

    def kick(self, identifier: str, code: int, reason: str) -> None:
        self._fleet.close_identifier(identifier, code, reason)

    def holds(self, identifier: str) -> bool:
        return identifier in self._registry.by_identifier

    def groups_of(self, identifier: str) -> Collection[str]:
        return self._registry.memberships.get(identifier, ())

    def meta_of(self, identifier: str) -> Mapping[str, Any] | None:
        return self._fleet.presence.metas.get(identifier)

    def memberships(self) -> Mapping[str, Collection[str]]:
        memberships = self._registry.memberships
        return {
            identifier: memberships.get(identifier, ())
            for identifier in self._registry.by_identifier
        }

    def spawn(
        self, func: Callable[[*_Args], Coroutine[Any, Any, None]], *args: *_Args, name: str
    ) -> None:
        self._fleet.context.spawn(func, *args, name=name)
