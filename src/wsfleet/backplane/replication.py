"""Membership across nodes: this node's view of the others, and its records in the store.

Group membership belongs to an identifier, fleet-wide: a join or leave holds on every node
the identifier is on, and a node an identifier arrives at takes the groups it has elsewhere.
Each node keeps its own identifiers' groups (the manager's registry) and mirrors the other
nodes' in a ``ClusterView``, from two sources that travel by different connections:

* the records in the store: identifier -> groups, one record per node, written before the
  change is announced and rewritten whole (``reassert``) after every reconnection; a node
  loads another's record when it first hears of it, and again after a ``hello``;
* the announcements on the bus (``join``, ``leave``, ``online``, ``offline``), which the
  view follows as they come.

A change applied while a record was on its way may be newer than the record: it is made
again on top of the record once it arrives (``load``).

What another node says costs this node memory and work, so it is bounded: the view holds
at most so many nodes and records (``ClusterView``); a membership change is taken only from
a node this one knows (in the view, holding a lease, or loading after its ``hello``: every
real node is one of these when its changes arrive, and what is refused from it is in its
record when that is loaded); and the records of the nodes that said ``hello`` are loaded by
one task, through one session, for those holding a lease only (``announced``).

Presence metadata travels with the membership: in each identifier's record, and in the
``online`` announcement (again when it changes). A record's metadata is checked as an
announcement's is (``check_meta``); one that fails is dropped, counted
(``"refused: bad meta"``) and logged, and the identifier kept without it.

``Replication`` knows neither the link nor the manager: the backplane hands it the local
``Node`` and a session of the store for each operation. Every operation on the store is
bounded by ``op_timeout``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Final

import anyio

from ..errors import InvalidArgument, WrongType
from ..presence import check_meta
from .node import Node
from .store import Store, StoreSession
from .view import ClusterView
from .wire import Kind

__all__ = ["REFRESH_AFTER", "Replication"]

logger = logging.getLogger("wsfleet.backplane")

#: How old a node's record in the view may grow before the heartbeat loads it again (one
#: node per beat): what the announcements added and the record does not hold (forged in
#: that node's name, say) is gone by then.
REFRESH_AFTER: Final = 60.0


class Replication:
    """The view of the other nodes, kept from their records and announcements."""

    __slots__ = (
        "_announced",
        "_loaded",
        "_loads",
        "live",
        "node_id",
        "op_timeout",
        "store",
        "view",
    )

    def __init__(self, view: ClusterView, store: Store, node_id: str, op_timeout: float) -> None:
        self.view = view
        self.store = store
        self.node_id = node_id
        self.op_timeout = op_timeout
        #: Per load of a node's record under way: the view changes made meanwhile.
        self._loads: list[list[Callable[[], None]]] = []
        #: The nodes holding a lease, as last read from the store.
        self.live: set[str] = set()
        #: Nodes that said ``hello`` and whose records are to load (at most ``max_nodes``).
        self._announced: set[str] = set()
        #: When each node's record was last loaded.
        self._loaded: dict[str, float] = {}

    def knows(self, origin: str) -> bool:
        """Whether ``origin`` is a node this one takes membership changes from."""
        return self.view.knows(origin) or origin in self.live or origin in self._announced

    # -- the view follows ----------------------------------------------------------------------

    def follow(self, kind: Kind, identifier: str, group: str, origin: str | None) -> None:
        """``identifier`` joined or left ``group`` on ``origin`` (``None``: on this node)."""
        self._change(partial(self._follow, kind, identifier, group, origin))

    def online(
        self, origin: str, identifier: str, node: Node, meta: dict[str, Any] | None = None
    ) -> None:
        """``identifier`` got its first socket on ``origin`` (or new ``meta`` there)."""
        self._change(partial(self._online, origin, identifier, node, meta))

    def offline(self, origin: str, identifier: str) -> None:
        """``identifier`` lost its last socket on ``origin``."""
        self._change(partial(self.view.offline, origin, identifier))

    def _follow(self, kind: Kind, identifier: str, group: str, origin: str | None) -> None:
        """Groups belong to the identifier: a join or leave holds on every node it is on."""
        view = self.view
        nodes = sorted(view.presence(identifier) - {origin})
        if origin is not None:
            nodes.insert(0, origin)  # first: the change is the origin's (presence events)
        for where in nodes:
            if kind == "join":
                view.join(where, identifier, group)
            else:
                view.leave(where, identifier, group)

    def _online(
        self, origin: str, identifier: str, node: Node, meta: dict[str, Any] | None
    ) -> None:
        view = self.view
        if origin not in view.presence(identifier):
            # The origin took the identifier's groups from its own view when its first
            # socket registered; ours says the same.
            groups = view.groups_of(identifier)
            groups.update(node.groups_of(identifier))
            view.online(origin, identifier)
            for group in groups:
                view.join(origin, identifier, group)
        view.set_meta(origin, identifier, meta)

    def _change(self, change: Callable[[], None]) -> None:
        change()
        for changes in self._loads:
            changes.append(change)

    # -- the records ---------------------------------------------------------------------------

    async def record(self, session: StoreSession, identifier: str, node: Node) -> None:
        """Write ``identifier``'s membership on this node to the store, where nodes that
        start later (or reload this one) read it."""
        with anyio.fail_after(self.op_timeout):
            if node.holds(identifier):
                groups = sorted(node.groups_of(identifier))
                meta = node.meta_of(identifier)
                if meta:
                    await session.put_member(self.node_id, identifier, groups, meta=meta)
                else:  # as a store that predates metadata takes it
                    await session.put_member(self.node_id, identifier, groups)
            else:
                await session.del_member(self.node_id, identifier)

    async def reassert(self, session: StoreSession, node: Node, ttl: float) -> None:
        """Replace this node's record by what it holds now, with a lease of ``ttl``."""
        snapshot = {identifier: sorted(groups) for identifier, groups in node.memberships().items()}
        metas = {name: meta for name in snapshot if (meta := node.meta_of(name))}
        if metas:
            await session.replace_node(self.node_id, snapshot, ttl, metas=metas)
        else:
            await session.replace_node(self.node_id, snapshot, ttl)

    async def reload(self, session: StoreSession, live: set[str]) -> None:
        """After a reconnection: forget the nodes not in ``live``, load the others (as many
        as the view may follow)."""
        self.keep(live)
        for other in sorted(live - {self.node_id})[: self.view.max_nodes]:
            await self.load(session, other)

    def keep(self, live: set[str]) -> set[str]:
        """Forget every node not in ``live`` (their leases lapsed); returns them."""
        self.live = live
        gone = self.view.nodes() - live
        for node in gone:
            self.view.drop(node)
            self._loaded.pop(node, None)
        return gone

    async def refresh(self, session: StoreSession, after: float = REFRESH_AFTER) -> None:
        """Load again the record of the node loaded longest ago, if that is ``after``
        seconds or more (the heartbeat calls it: one node per beat)."""
        if not self._loaded:
            return
        oldest = min(self._loaded, key=self._loaded.__getitem__)
        if anyio.current_time() - self._loaded[oldest] >= after:
            await self.load(session, oldest)

    async def load_new(self, session: StoreSession, live: set[str]) -> None:
        """Load the nodes of ``live`` the view does not know yet."""
        room = self.view.max_nodes - len(self.view.nodes())
        for new in sorted(live - self.view.nodes() - {self.node_id})[: max(room, 0)]:
            await self.load(session, new)

    async def load(self, session: StoreSession, origin: str) -> None:
        """Replace what the view holds of ``origin`` by its record in the store.

        The record and the announcements come by different connections: a change applied
        while the record was on its way may be newer than the record, so it is made again
        on top of it. (A change applied before the load began is in the record already: a
        node writes its record before it announces the change.)
        """
        changes: list[Callable[[], None]] = []
        self._loads.append(changes)
        try:
            with anyio.fail_after(self.op_timeout):
                snapshot, metas = await session.load_record(origin)
        finally:
            self._loads = [c for c in self._loads if c is not changes]
        self.view.replace(origin, snapshot, self._checked(origin, metas))
        if self.view.knows(origin):
            self._loaded[origin] = anyio.current_time()
        for change in changes:
            change()

    def _checked(self, origin: str, metas: Mapping[str, object]) -> dict[str, dict[str, Any]]:
        """The metadata of ``origin``'s record that passes ``check_meta`` (the rest is
        dropped, counted and logged: no node writes it)."""
        checked: dict[str, dict[str, Any]] = {}
        for identifier, meta in metas.items():
            try:
                checked[identifier] = check_meta(meta)
            except (InvalidArgument, WrongType) as exc:
                counts = self.view.counts
                counts["refused: bad meta"] += 1
                counts["refused"] += 1
                logger.warning("node %s: metadata of %r refused: %s", origin, identifier, exc)
        return checked

    def announced(self, origin: str) -> bool:
        """``origin`` said ``hello``: its record is to load (``reload_announced``).
        ``False`` if too many wait already (the heartbeat loads it if it holds a lease)."""
        announced = self._announced
        if origin in announced or len(announced) < self.view.max_nodes:
            announced.add(origin)
            return True
        return False

    async def reload_announced(self, linger: float) -> int:
        """Load the records of the nodes that said ``hello``, through one session of its
        own, until none has waited for ``linger`` seconds (a flood of hellos opens a
        session per ``linger`` at most); those that hold no lease are not loaded. Returns
        how many of those there were (a ``hello`` no node with a lease said: forged)."""
        unknown = 0
        try:
            async with self.store.session() as session:
                while self._announced:
                    with anyio.fail_after(self.op_timeout):
                        live = await session.live_nodes()
                    for origin in sorted(self._announced):
                        if origin in live and origin != self.node_id:
                            await self.load(session, origin)
                        else:
                            unknown += 1
                        self._announced.discard(origin)
                    await anyio.sleep(linger)
        finally:
            self._announced.clear()  # the heartbeat loads the nodes of a failed attempt
        return unknown
