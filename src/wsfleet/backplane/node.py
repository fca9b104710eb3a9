"""What the backplane needs from the node it serves: ``Node``.

A backplane never holds a manager. ``Backplane.run(node)`` receives this small interface,
which the manager implements over its own runtime, and reaches the local side through it
alone: calls go one way (the manager calls the backplane; the backplane calls only these),
and a backplane can be run and tested with a node of a test's own making.

Every method is synchronous and does no I/O; the backplane calls them from its tasks, in the
node's event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from typing import Any, Protocol, TypeVarTuple

from .wire import SendTo

__all__ = ["Node"]

_Args = TypeVarTuple("_Args")


class Node(Protocol):
    """The local side of a backplane: this node's sockets and groups."""

    def deliver(
        self,
        to: SendTo,
        target: str | list[str] | None,
        message: str | bytes,
        exclude: Sequence[str],
    ) -> int:
        """Carry out another node's fan-out on this node's sockets, and never publish it
        again: how many connections it was queued for.

        ``to``/``target`` name the targets as the sender's call did (``"all"``; ``"one"``
        and an identifier; ``"many"`` and identifiers; ``"group"`` and a group); ``exclude``
        names identifiers to skip. A message this node cannot take (over its own size
        limit) is dropped and counted by the node, in its own statistics.
        """

    def mirror(self, identifier: str, group: str, joined: bool) -> None:
        """Another node put ``identifier`` in ``group`` (``joined``) or took it out: follow,
        if ``identifier`` has sockets here (groups belong to an identifier, fleet-wide)."""

    def kick(self, identifier: str, code: int, reason: str) -> None:
        """Close every socket of ``identifier`` here with ``code`` and ``reason``."""

    def holds(self, identifier: str) -> bool:
        """Whether ``identifier`` has sockets here."""

    def groups_of(self, identifier: str) -> Collection[str]:
        """``identifier``'s groups here; empty if it has no socket here."""

    def meta_of(self, identifier: str) -> Mapping[str, Any] | None:
        """``identifier``'s presence metadata here; ``None`` if it has none (or no socket)."""

    def memberships(self) -> Mapping[str, Collection[str]]:
        """Every identifier with sockets here, with its groups: what the store must hold of
        this node. The backplane reads it at once, before its next ``await``."""

    def spawn(
        self, func: Callable[[*_Args], Coroutine[Any, Any, None]], *args: *_Args, name: str
    ) -> None:
        """Start ``func(*args)`` as a task of the node's (one that reloads another node's
        record, say); it ends at the latest when the node does."""
