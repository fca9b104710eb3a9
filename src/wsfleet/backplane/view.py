"""What this node knows of the other nodes: who is online where, in which groups.

Group membership belongs to an identifier, cluster-wide; each node that holds sockets of an
identifier keeps its groups in its own registry, and every node mirrors the others' here,
from the store at (re)connection and from the backplane's ``join``/``leave``/``online``/
``offline`` envelopes in between. Updates are O(1) (O(groups) for an identifier going
offline); queries cost the size of their answer. No I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["ClusterView"]


class ClusterView:
    __slots__ = ("_members", "_nodes", "_where")

    def __init__(self) -> None:
        #: node -> identifier -> groups
        self._nodes: dict[str, dict[str, set[str]]] = {}
        #: group -> identifier -> on how many nodes that identifier is in the group
        self._members: dict[str, dict[str, int]] = {}
        #: identifier -> nodes where it is online
        self._where: dict[str, set[str]] = {}

    # -- updates ---------------------------------------------------------------------------

    def online(self, node: str, identifier: str) -> set[str]:
        identifiers = self._nodes.setdefault(node, {})
        groups = identifiers.get(identifier)
        if groups is None:
            groups = identifiers[identifier] = set()
            self._where.setdefault(identifier, set()).add(node)
        return groups

    def offline(self, node: str, identifier: str) -> None:
        identifiers = self._nodes.get(node)
        if identifiers is None or identifier not in identifiers:
            return
        for group in identifiers.pop(identifier):
            self._uncount(group, identifier)
        nodes = self._where[identifier]
        nodes.discard(node)
        if not nodes:
            del self._where[identifier]

    def join(self, node: str, identifier: str, group: str) -> None:
        groups = self.online(node, identifier)
        if group not in groups:
            groups.add(group)
            counts = self._members.setdefault(group, {})
            counts[identifier] = counts.get(identifier, 0) + 1

    def leave(self, node: str, identifier: str, group: str) -> None:
        groups = self._nodes.get(node, {}).get(identifier)
        if groups is not None and group in groups:
            groups.discard(group)
            self._uncount(group, identifier)

    def _uncount(self, group: str, identifier: str) -> None:
        counts = self._members[group]
        if counts[identifier] == 1:
            del counts[identifier]
            if not counts:
                del self._members[group]
        else:
            counts[identifier] -= 1

    def replace(self, node: str, snapshot: Mapping[str, Iterable[str]]) -> None:
        """Forget what was known of ``node`` and take ``snapshot`` (identifier -> groups)."""
        self.drop(node)
        # Known even if it holds nobody, as after its last "offline": the backplane reloads
        # only nodes the view does not know.
        self._nodes[node] = {}
        for identifier, groups in snapshot.items():
            self.online(node, identifier)
            for group in groups:
                self.join(node, identifier, group)

    def drop(self, node: str) -> None:
        """``node`` is gone: everything it held disappears from the view."""
        for identifier in list(self._nodes.get(node, ())):
            self.offline(node, identifier)
        self._nodes.pop(node, None)

    # -- queries -----------------------------------------------------------------------------

    def nodes(self) -> set[str]:
        return set(self._nodes)

    def members(self, group: str) -> set[str]:
        return set(self._members.get(group, ()))

    def groups_of(self, identifier: str) -> set[str]:
        groups: set[str] = set()
        for node in self._where.get(identifier, ()):
            groups |= self._nodes[node][identifier]
        return groups

    def presence(self, identifier: str) -> set[str]:
        return set(self._where.get(identifier, ()))

    def identifiers(self) -> set[str]:
        return set(self._where)
