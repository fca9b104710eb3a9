"""Who is connected, under which identifier, in which groups and in which state.

Plain dictionaries kept consistent with each other, so every lookup the manager offers is
O(1) or O(k) in the size of its answer, never a scan of the fleet. No I/O and no event loop:
the manager calls these methods synchronously, between awaits, so they need no locks.

``watch``, if set, hears of every identifier that comes, goes, joins or leaves a group here
(the presence part; one call, no work, for the change).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from ..errors import UnknownIdentifier
from ..fsm.states import ConnectionState
from ..names import MAX_NAME_LENGTH, check_name
from .connection import Connection

__all__ = ["MAX_NAME_LENGTH", "Registry", "check_name"]


class Registry:
    """The indexes of a manager's connections.

    Sockets are keyed by ``id()``: the connection holds the socket, so the id stays unique
    for as long as the entry exists, and sockets that define ``__eq__`` cannot collide.

    ``by_identifier`` maps an identifier to its one connection, or to a dict of them (by
    socket id, in registration order) once it has several: most identifiers hold one
    socket, and a dict of one would cost each about 250 bytes and an object more for the
    garbage collector. Read it through ``connections_of``; its keys are the identifiers.
    """

    __slots__ = ("by_identifier", "by_socket", "by_state", "groups", "memberships", "watch")

    def __init__(self) -> None:
        self.by_socket: dict[int, Connection] = {}
        self.by_identifier: dict[str, Connection | dict[int, Connection]] = {}
        self.by_state: dict[ConnectionState, dict[int, Connection]] = {
            state: {} for state in ConnectionState
        }
        self.groups: dict[str, set[str]] = {}
        self.memberships: dict[str, set[str]] = {}
        self.watch: Callable[[str], None] | None = None

    # -- connections ---------------------------------------------------------------------

    def get(self, socket: object) -> Connection | None:
        conn = self.by_socket.get(id(socket))
        return conn if conn is not None and conn.socket is socket else None

    def add(self, conn: Connection) -> None:
        key = id(conn.socket)
        self.by_socket[key] = conn
        by_identifier = self.by_identifier
        identifier = conn.identifier
        sockets = by_identifier.get(identifier)
        if sockets is None:
            by_identifier[identifier] = conn
            if self.watch is not None:
                self.watch(identifier)
        elif isinstance(sockets, dict):
            sockets[key] = conn
        else:
            by_identifier[identifier] = {id(sockets.socket): sockets, key: conn}

    def remove(self, conn: Connection) -> None:
        """Forget ``conn``; an identifier whose last socket goes leaves every group."""
        key = id(conn.socket)
        del self.by_socket[key]
        self.by_state[conn.state].pop(key, None)
        identifier = conn.identifier
        sockets = self.by_identifier[identifier]
        if isinstance(sockets, dict):
            del sockets[key]
            if sockets:
                return
        del self.by_identifier[identifier]
        if self.watch is not None:
            self.watch(identifier)
        memberships = self.memberships
        if memberships:
            for group in memberships.pop(identifier, ()):
                self._leave(identifier, group)

    def rekey(self, conn: Connection, socket: object) -> None:
        """``conn`` continues under a new socket (a resumed session)."""
        old, new = id(conn.socket), id(socket)
        del self.by_socket[old]
        self.by_socket[new] = conn
        sockets = self.by_identifier[conn.identifier]
        if isinstance(sockets, dict):
            sockets[new] = sockets.pop(old)
        by_state = self.by_state[conn.state]
        if by_state.pop(old, None) is not None:
            by_state[new] = conn

    def moved(self, conn: Connection, old: ConnectionState | None, new: ConnectionState) -> None:
        key = id(conn.socket)
        if old is not None:
            self.by_state[old].pop(key, None)
        self.by_state[new][key] = conn

    def connections_of(self, identifier: str) -> Iterable[Connection]:
        sockets = self.by_identifier.get(identifier)
        if sockets is None:
            return ()
        if isinstance(sockets, dict):
            return sockets.values()
        return (sockets,)

    def __len__(self) -> int:
        return len(self.by_socket)

    def __iter__(self) -> Iterator[Connection]:
        return iter(self.by_socket.values())

    # -- groups --------------------------------------------------------------------------

    def join(self, identifier: str, group: str) -> None:
        if identifier not in self.by_identifier:
            raise UnknownIdentifier(f"no connection is registered as {identifier!r}")
        groups = self.memberships.setdefault(identifier, set())
        if group not in groups:
            groups.add(group)
            self.groups.setdefault(group, set()).add(identifier)
            if self.watch is not None:
                self.watch(identifier)

    def leave(self, identifier: str, group: str) -> None:
        """Idempotent, even for an identifier with no socket left: it is in no group then.

        An application's "leave the room" routinely races the cleanup of the identifier's
        last socket, which has already taken it out of every group.
        """
        groups = self.memberships.get(identifier)
        if groups is None or group not in groups:
            return
        groups.discard(group)
        if not groups:
            del self.memberships[identifier]
        self._leave(identifier, group)

    def _leave(self, identifier: str, group: str) -> None:
        members = self.groups[group]
        members.discard(identifier)
        if not members:
            del self.groups[group]  # empty groups do not linger
        if self.watch is not None:
            self.watch(identifier)
