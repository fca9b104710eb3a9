"""What this node knows of the other nodes: who is online where, in which groups.

Group membership belongs to an identifier, cluster-wide; each node that holds sockets of an
identifier keeps its groups in its own registry, and every node mirrors the others' here,
from the store at (re)connection and from the backplane's ``join``/``leave``/``online``/
``offline`` envelopes in between. Updates are O(1) (O(groups) for an identifier going
offline); queries cost the size of their answer. No I/O.

What another node says fills this node's memory, so the view is bounded: at most
``max_nodes`` nodes, and ``max_records`` records per node (an identifier online there is
one, each of its groups one more). A change past a bound is refused and counted
(``"refused: too many nodes"``, ``"refused: too many records"``); what a node holds leaves
the view with it, when its lease lapses.

Each identifier online on a node may carry that node's presence metadata (a small JSON
object, checked before it gets here: ``wsfleet.presence.check_meta``). ``watch``, if set,
hears of every identifier whose presence changes in the view, and on which node (the
manager's presence part, which derives its events from it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

__all__ = ["DEFAULT_MAX_NODES", "DEFAULT_MAX_RECORDS", "ClusterView"]

#: The most other nodes a view follows.
DEFAULT_MAX_NODES: Final = 1024
#: The most records (identifiers online, and their groups) a view keeps of one other node.
DEFAULT_MAX_RECORDS: Final = 200_000


class ClusterView:
    __slots__ = (
        "_members",
        "_metas",
        "_nodes",
        "_sizes",
        "_where",
        "counts",
        "max_nodes",
        "max_records",
        "watch",
    )

    def __init__(
        self,
        *,
        max_nodes: int = DEFAULT_MAX_NODES,
        max_records: int = DEFAULT_MAX_RECORDS,
        counts: Counter[str] | None = None,
    ) -> None:
        self.max_nodes = max_nodes
        self.max_records = max_records
        #: Where the refusals are counted (the backplane's statistics).
        self.counts: Counter[str] = Counter() if counts is None else counts
        #: node -> how many records it holds (identifiers, and their groups)
        self._sizes: dict[str, int] = {}
        #: node -> identifier -> groups
        self._nodes: dict[str, dict[str, set[str]]] = {}
        #: group -> identifier -> on how many nodes that identifier is in the group
        self._members: dict[str, dict[str, int]] = {}
        #: identifier -> nodes where it is online
        self._where: dict[str, set[str]] = {}
        #: node -> identifier -> its metadata there (only the identifiers that have some)
        self._metas: dict[str, dict[str, dict[str, Any]]] = {}
        #: Told ``(identifier, node)`` of each change (see the module docstring).
        self.watch: Callable[[str, str], None] | None = None

    # -- updates ---------------------------------------------------------------------------

    def online(self, node: str, identifier: str) -> set[str] | None:
        """``identifier``'s groups on ``node``, now that it is online there; ``None`` if
        that was refused (a bound was reached)."""
        identifiers = self._nodes.get(node)
        if identifiers is None:
            identifiers = self._add(node)
            if identifiers is None:
                return None
        groups = identifiers.get(identifier)
        if groups is None:
            if self._sizes[node] >= self.max_records:
                self._refuse("too many records")
                return None
            self._sizes[node] += 1
            groups = identifiers[identifier] = set()
            self._where.setdefault(identifier, set()).add(node)
            self._changed(identifier, node)
        return groups

    def _changed(self, identifier: str, node: str) -> None:
        if self.watch is not None:
            self.watch(identifier, node)

    def _add(self, node: str) -> dict[str, set[str]] | None:
        if len(self._nodes) >= self.max_nodes:
            self._refuse("too many nodes")
            return None
        self._sizes[node] = 0
        identifiers: dict[str, set[str]] = {}
        self._nodes[node] = identifiers
        return identifiers

    def _refuse(self, bound: str) -> None:
        self.counts[f"refused: {bound}"] += 1
        self.counts["refused"] += 1

    def offline(self, node: str, identifier: str) -> None:
        identifiers = self._nodes.get(node)
        if identifiers is None or identifier not in identifiers:
            return
        groups = identifiers.pop(identifier)
        metas = self._metas.get(node)
        if metas is not None and metas.pop(identifier, None) is not None and not metas:
            del self._metas[node]
        self._sizes[node] -= 1 + len(groups)
        for group in groups:
            self._uncount(group, identifier)
        nodes = self._where[identifier]
        nodes.discard(node)
        if not nodes:
            del self._where[identifier]
        self._changed(identifier, node)

    def set_meta(self, node: str, identifier: str, meta: dict[str, Any] | None) -> None:
        """``identifier``'s metadata on ``node`` (checked already), if it is online there."""
        if identifier not in self._nodes.get(node, {}):
            return
        metas = self._metas.get(node, {})
        if metas.get(identifier) == (meta or None):
            return
        if meta:
            self._metas.setdefault(node, {})[identifier] = meta
        elif metas:
            del metas[identifier]
            if not metas:
                del self._metas[node]
        self._changed(identifier, node)

    def join(self, node: str, identifier: str, group: str) -> None:
        groups = self.online(node, identifier)
        if groups is not None and group not in groups:
            if self._sizes[node] >= self.max_records:
                self._refuse("too many records")
                return
            self._sizes[node] += 1
            groups.add(group)
            counts = self._members.setdefault(group, {})
            counts[identifier] = counts.get(identifier, 0) + 1
            self._changed(identifier, node)

    def leave(self, node: str, identifier: str, group: str) -> None:
        groups = self._nodes.get(node, {}).get(identifier)
        if groups is not None and group in groups:
            groups.discard(group)
            self._sizes[node] -= 1
            self._uncount(group, identifier)
            self._changed(identifier, node)

    def _uncount(self, group: str, identifier: str) -> None:
        counts = self._members[group]
        if counts[identifier] == 1:
            del counts[identifier]
            if not counts:
                del self._members[group]
        else:
            counts[identifier] -= 1

    def replace(
        self,
        node: str,
        snapshot: Mapping[str, Iterable[str]],
        metas: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        """Forget what was known of ``node`` and take ``snapshot`` (identifier -> groups),
        with ``metas`` (identifier -> its metadata, checked already)."""
        self.drop(node)
        # Known even if it holds nobody, as after its last "offline": the backplane reloads
        # only nodes the view does not know.
        if self._add(node) is None:
            return
        for identifier, groups in snapshot.items():
            self.online(node, identifier)
            for group in groups:
                self.join(node, identifier, group)
        for identifier, meta in (metas or {}).items():
            self.set_meta(node, identifier, meta)

    def drop(self, node: str) -> None:
        """``node`` is gone: everything it held disappears from the view."""
        for identifier in list(self._nodes.get(node, ())):
            self.offline(node, identifier)
        self._nodes.pop(node, None)
        self._sizes.pop(node, None)
        self._metas.pop(node, None)

    # -- queries -----------------------------------------------------------------------------

    def nodes(self) -> set[str]:
        return set(self._nodes)

    def knows(self, node: str) -> bool:
        return node in self._nodes

    def size(self, node: str) -> int:
        """How many records the view keeps of ``node``."""
        return self._sizes.get(node, 0)

    def members(self, group: str) -> set[str]:
        return set(self._members.get(group, ()))

    def groups_of(self, identifier: str) -> set[str]:
        groups: set[str] = set()
        for node in self._where.get(identifier, ()):
            groups |= self._nodes[node][identifier]
        return groups

    def presence(self, identifier: str) -> set[str]:
        return set(self._where.get(identifier, ()))

    def meta_of(self, identifier: str) -> dict[str, Any] | None:
        """``identifier``'s metadata on the first node (by id) that holds some for it."""
        for node in sorted(self._where.get(identifier, ())):
            meta = self._metas.get(node, {}).get(identifier)
            if meta is not None:
                return meta
        return None

    def identifiers(self) -> set[str]:
        return set(self._where)
