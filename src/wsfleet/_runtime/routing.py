"""Which of this node's connections a fan-out reaches: one function for every caller.

A fan-out names its targets the same way whether the application called it here or another
node's application did and the backplane carried it: everyone (``"all"``), one identifier's
sockets (``"one"``), several identifiers' (``"many"``) or a group's members' (``"group"``),
less the excluded identifiers and sockets. So local delivery and delivery from elsewhere
cannot disagree about who gets a message. Lookups go through the registry's indexes: the
cost is the size of the answer, never a scan of the fleet (except for ``"all"``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Literal, TypeAlias

from ..errors import WrongType
from .connection import Connection
from .registry import Registry

__all__ = ["Kind", "excluded", "excluded_names", "targets"]

Kind: TypeAlias = Literal["all", "one", "many", "group"]

_NOBODY: frozenset[int] = frozenset()


#: What can never name a socket or an identifier: a mistake, refused with ``WrongType``.
_NOT_A_TARGET = (int, float, bytes, bytearray, memoryview, type(None), list, tuple, set, dict)


def excluded(registry: Registry, exclude: object) -> set[int]:
    """The sockets (by ``id``) that ``exclude`` names: an identifier, a socket, a
    ``Connection``, or an iterable of those. A socket this node does not hold is ignored
    (it may have just left); a number, bytes, ``None`` or a nested collection is a mistake
    and refused with ``WrongType``."""
    if isinstance(exclude, str | Connection) or registry.get(exclude) is not None:
        items: Iterable[object] = (exclude,)
    elif isinstance(exclude, Iterable) and not isinstance(exclude, bytes | bytearray | dict):
        items = list(exclude)
    else:
        items = (exclude,)
    skip: set[int] = set()
    for item in items:
        if isinstance(item, str):
            skip.update(id(c.socket) for c in registry.connections_of(item))
        elif isinstance(item, Connection):
            skip.add(id(item.socket))
        elif isinstance(item, _NOT_A_TARGET):
            raise WrongType(
                "exclude takes identifiers (str), sockets or Connections, or an iterable of "
                f"them; got {type(item).__name__}"
            )
        elif registry.get(item) is not None:
            skip.add(id(item))
    return skip


def excluded_names(exclude: object) -> list[str]:
    """The identifiers ``exclude`` names (the part of it other nodes can apply)."""
    if isinstance(exclude, str):
        return [exclude]
    if not isinstance(exclude, bytes) and isinstance(exclude, Iterable):
        return [item for item in exclude if isinstance(item, str)]
    return []


def targets(
    registry: Registry,
    to: Kind,
    target: str | Sequence[str] | None = None,
    skip: Collection[int] = _NOBODY,
) -> list[Connection]:
    """The connections ``to``/``target`` names on this node, less the sockets in ``skip``.

    ``target`` is an identifier for ``"one"``, identifiers for ``"many"`` (a socket is
    reached once however often its identifier is named), a group for ``"group"``.
    """
    if to == "all":
        if not skip:
            return list(registry.by_socket.values())
        return [c for key, c in registry.by_socket.items() if key not in skip]
    if to == "one":
        assert isinstance(target, str)
        found = registry.connections_of(target)
    elif to == "many":
        assert target is not None
        assert not isinstance(target, str)
        found = [c for name in dict.fromkeys(target) for c in registry.connections_of(name)]
    else:
        assert isinstance(target, str)
        members = registry.groups.get(target, ())
        found = [c for name in list(members) for c in registry.connections_of(name)]
    if not skip:
        return list(found)
    return [c for c in found if id(c.socket) not in skip]
