"""Many processes, one fleet: the ``Backplane`` that connects a node to the others.

Each manager is a *node*. A fan-out is delivered to the node's own sockets at once, without
a round trip, and published once for the other nodes, which deliver it to theirs.
Membership changes travel the same way (``join``, ``leave``, ``online``, ``offline``) and
are also written to the *store*, with a time-to-live that the node's heartbeat keeps
extending, so a node that dies (even by SIGKILL) drops out of every other node's view when
its entry expires, with no action from anyone.

A send this node accepted (``send`` returned ``True``) is, on every other node, delivered or
counted as dropped, once: the sender numbers its sends and each receiver counts the numbers
it missed (``accounting`` explains how, and why the sender cannot).

The ``Backplane`` ties the parts together, as the runtime's ``Fleet`` does for one node's
sockets: the ``Link`` carries envelopes to and from the store and keeps the lease (its
``Publisher`` queues and numbers what this node says); the ``Replication`` keeps the view of
the other nodes and this node's records; the ``Node`` the manager hands to ``run`` is the
local side. What the link hears takes effect in one place (``_Relay.received``). The
manager calls the backplane; the backplane calls only the ``Node``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from secrets import token_hex
from typing import Any

import anyio
import anyio.abc

from ..errors import InvalidArgument, MessageTooLarge, WrongType
from ..fsm.states import ConnectionState
from ..policies.retry import RetryPolicy
from .link import DEFAULT_LINK_POLICY, Link
from .node import Node
from .publisher import MEMBERSHIP
from .replication import REFRESH_AFTER, Replication
from .signing import Signing
from .store import Store, StoreSession
from .view import DEFAULT_MAX_NODES, DEFAULT_MAX_RECORDS, ClusterView
from .wire import DEFAULT_MAX_MESSAGE_SIZE, ENVELOPE_ROOM, Envelope, Kind, encoded_size

__all__ = ["Backplane"]

logger = logging.getLogger("wsfleet.backplane")

C = ConnectionState.CONNECTED

#: How long the task that loads the records of the nodes that said hello waits for more
#: before it closes its session: however many hellos come, a session per this at most.
HELLO_LINGER = 0.1


class Backplane:
    r"""Connects a manager to the other nodes of its fleet through a ``Store``.

    ``buffer`` keeps up to that many sends while the link is down (0: refuse and count
    them); ``max_pending`` bounds the sends waiting to be published while it is up;
    ``op_timeout`` bounds each operation on the store. ``max_message_size`` bounds one
    envelope on the bus, in bytes: ``check_message`` refuses a larger message before the
    manager queues it, and an envelope over it from another node is malformed here.

    ``secrets`` turns signing on (``signing`` explains it): one key (``bytes`` or ``str`` of
    at least 16 bytes), or two while changing keys, the new one first. This node then
    signs every envelope with each key and drops, counts and logs every one that is not
    signed with one of them. Every node of the fleet needs it on (or off) alike.

    ``max_nodes`` bounds the other nodes this one follows (and the peers, origins and
    hellos it keeps track of); ``max_records`` the records (an identifier online, and
    each of its groups) it keeps of one other node. Past either, a change is refused and
    counted (``stats["refused: ..."]``): what another node says never takes more memory.
    What it says in a real node's name, and that node's record does not hold, lasts until
    that record is loaded again: at its next ``hello``, or within a minute (``refresh_after``
    seconds, one node per heartbeat).
    """

    def __init__(
        self,
        store: Store,
        *,
        namespace: str = "wsfleet",
        node_id: str | None = None,
        retry_policy: RetryPolicy | None = None,
        heartbeat_interval: float = 2.0,
        node_ttl: float = 6.0,
        buffer: int = 0,
        max_pending: int = 10_000,
        op_timeout: float = 2.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        secrets: bytes | str | Sequence[bytes | str] | None = None,
        max_nodes: int = DEFAULT_MAX_NODES,
        max_records: int = DEFAULT_MAX_RECORDS,
    ) -> None:
        signing = None if secrets is None else Signing(secrets)
        if not isinstance(namespace, str) or not namespace:
            raise InvalidArgument("namespace must be a non-empty str")
        for name, value in (
            ("heartbeat_interval", heartbeat_interval),
            ("node_ttl", node_ttl),
            ("op_timeout", op_timeout),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise InvalidArgument(f"{name} must be a number of seconds > 0, got {value!r}")
        if node_ttl <= heartbeat_interval:
            raise InvalidArgument("node_ttl must be longer than heartbeat_interval")
        for name, bound in (("max_nodes", max_nodes), ("max_records", max_records)):
            if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
                raise InvalidArgument(f"{name} must be an int >= 1, got {bound!r}")
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 0:
            raise InvalidArgument(f"buffer must be an int >= 0, got {buffer!r}")
        if (
            isinstance(max_message_size, bool)
            or not isinstance(max_message_size, int)
            or max_message_size <= ENVELOPE_ROOM
        ):
            raise InvalidArgument(
                f"max_message_size must be an int > {ENVELOPE_ROOM} (bytes of one envelope), "
                f"got {max_message_size!r}"
            )
        self.store = store
        self.namespace = namespace
        self.node_id = node_id if node_id is not None else token_hex(6)
        self.heartbeat_interval = float(heartbeat_interval)
        self.node_ttl = float(node_ttl)
        self.buffer = buffer
        self.max_pending = max(max_pending, buffer)
        self.op_timeout = float(op_timeout)
        self.max_message_size = max_message_size
        #: The keys this node signs with and accepts (``None``: signing is off).
        self.signing = signing
        #: How old another node's record may grow in the view before it is loaded again.
        self.refresh_after = REFRESH_AFTER
        self._link = Link(
            store,
            namespace=namespace,
            node_id=self.node_id,
            retry_policy=retry_policy if retry_policy is not None else DEFAULT_LINK_POLICY,
            heartbeat_interval=self.heartbeat_interval,
            node_ttl=self.node_ttl,
            buffer=self.buffer,
            max_pending=self.max_pending,
            op_timeout=self.op_timeout,
            max_message_size=max_message_size,
            signing=signing,
            max_nodes=max_nodes,
        )
        #: Counts of what the link did and dropped (the manager's ``stats().backplane``).
        self.stats: Counter[str] = self._link.stats
        self.view = ClusterView(max_nodes=max_nodes, max_records=max_records, counts=self.stats)
        self._publisher = self._link.publisher
        self._replication = Replication(self.view, store, self.node_id, self.op_timeout)
        #: Identifiers whose membership changed while the link was not CONNECTED.
        self._unannounced: set[str] = set()

    def __repr__(self) -> str:
        return repr(self._link)

    @property
    def state(self) -> ConnectionState:
        """The link's state: CONNECTED, or on its way back (ERROR, RECONNECTING)."""
        return self._link.state

    # -- what the manager calls (all synchronous: they only enqueue) --------------------------

    def check_message(self, message: object) -> None:
        """Refuse, with ``MessageTooLarge``, a message whose envelope would exceed
        ``max_message_size``. The manager asks before it queues anything, so that a message
        too large for the other nodes reaches nobody rather than only this node's sockets.

        Cheap for the common case: the exact size (JSON-escaped text) is measured only for
        text long enough to come near the bound.
        """
        if isinstance(message, str):
            if len(message) * 6 + ENVELOPE_ROOM <= self.max_message_size:
                return  # no character takes more than six bytes in JSON
        elif not isinstance(message, bytes):
            raise WrongType(f"message must be str or bytes, got {type(message).__name__}")
        size = encoded_size(message) + ENVELOPE_ROOM
        if size > self.max_message_size:
            raise MessageTooLarge(
                size,
                self.max_message_size,
                " on the backplane (counted as its envelope carries it: text JSON-escaped, "
                f"bytes in base64, plus {ENVELOPE_ROOM} bytes for the header and targets); "
                "pass a larger max_message_size to the Backplane (RedisBackplane(..., "
                "max_message_size=...)), and keep it well below Redis' "
                "client-output-buffer-limit for pubsub",
            )

    def send(
        self, to: str, target: str | list[str] | None, message: str | bytes, exclude: list[str]
    ) -> bool:
        """Publish a fan-out for the other nodes: ``True`` if this node accepted it, then
        each other node delivers it or counts it as dropped; ``False`` if it was dropped
        here and counted (the link is down, the queue is full)."""
        return self._publisher.send(to, target, message, exclude)

    def membership(
        self,
        kind: Kind,
        identifier: str,
        group: str | None = None,
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Tell the others that ``identifier`` came online, went offline, joined or left;
        an ``online`` carries its ``meta`` here, if any (sent again when it changes)."""
        if group is not None:
            # Every node holding sockets of ``identifier`` follows (``Node.mirror``).
            self._replication.follow(kind, identifier, group, None)
        if self._link.state is not C:
            # Re-asserted when the link is back: by the resync's snapshot, and, for changes
            # made while the resync awaits the store, from this set once CONNECTED.
            self._unannounced.add(identifier)
            return
        data: dict[str, Any] = {"id": identifier}
        if group is not None:
            data["group"] = group
        if meta:
            data["meta"] = meta
        self._publisher.enqueue(kind, data)

    def kick(self, identifier: str, code: int, reason: str) -> None:
        """Have every other node close the sockets of ``identifier``."""
        if self._link.state is not C:
            self._link.drop("link down")
            return
        self._publisher.enqueue("kick", {"id": identifier, "code": code, "reason": reason})

    # -- lifetime ------------------------------------------------------------------------------

    async def run(
        self,
        node: Node,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep the link up for ``node``'s whole life (a task of the manager's), until
        ``close``. ``node`` is the local side: what other nodes send reaches it."""
        await self._link.run(_Relay(self, node), task_status=task_status)

    async def close(self) -> None:
        """Leave the fleet cleanly: publish what is queued and announce the count (for up
        to ``op_timeout``), stop the link, remove this node's records at once.

        Sends still queued then are dropped and counted ("manager closed"). So are sends
        whose publish was cut short if the count could not be announced ("unconfirmed at
        close"): no other node would ever learn of them. That is the one count made
        without knowing: such a send may have reached a node all the same.
        """
        await self._link.close()


class _Relay:
    """What the link reports, carried to the node and the view (``LinkReports``)."""

    __slots__ = (
        "_backplane",
        "_link",
        "_node",
        "_publisher",
        "_refusals",
        "_reloading",
        "_replication",
        "_view",
    )

    def __init__(self, backplane: Backplane, node: Node) -> None:
        self._backplane = backplane
        self._node = node
        self._link = backplane._link
        self._publisher = backplane._publisher
        self._replication = backplane._replication
        self._view = backplane.view
        #: The refusals counted so far (a change in the view's count is logged).
        self._refusals = 0
        #: Whether the task that loads the records of the nodes that said hello runs.
        self._reloading = False

    async def reassert(self, session: StoreSession) -> None:
        # The snapshot says what changed while the link was down, and the others reload it
        # when they hear the hello: only what changes from here on (while the resync awaits
        # the store) is still to announce one by one. Announcing the whole outage's changes
        # again, two round trips each, held the newest back by seconds after a long outage.
        self._backplane._unannounced.clear()
        await self._replication.reassert(session, self._node, self._backplane.node_ttl)

    async def reload(self, session: StoreSession, live: set[str]) -> None:
        await self._replication.reload(session, live)

    def connected(self) -> None:
        """Announce what changed while the link was down, as the node has it now."""
        backplane = self._backplane
        node = self._node
        changed, backplane._unannounced = backplane._unannounced, set()
        for identifier in sorted(changed):
            if node.holds(identifier):
                backplane.membership("online", identifier, meta=node.meta_of(identifier))
                for group in sorted(node.groups_of(identifier)):
                    backplane.membership("join", identifier, group)
            else:
                backplane.membership("offline", identifier)

    def received(self, envelope: Envelope) -> None:
        """Another node's envelope takes effect here, and only here."""
        origin, data = envelope.node, envelope.data
        kind = envelope.kind
        if kind == "send":
            self._node.deliver(
                data["to"], data.get("target"), envelope.message, data.get("exclude", ())
            )
        elif kind in ("join", "leave"):
            identifier = data["id"]
            joined = kind == "join"
            if self._replication.knows(origin):
                self._replication.follow(kind, identifier, data["group"], origin)
            else:
                # Not (yet) a node of the fleet here: what it says of itself waits for its
                # record; the nodes known to hold ``identifier`` and this node's own sockets
                # of it follow all the same (the group is the identifier's, fleet-wide).
                self._refused("unknown node", origin)
                self._replication.follow(kind, identifier, data["group"], None)
            node = self._node
            if joined and len(node.groups_of(identifier)) >= self._view.max_records:
                self._refused("too many groups", origin)  # this node's registry is bounded too
            else:
                node.mirror(identifier, data["group"], joined)
            if self._node.holds(identifier):
                self._publisher.rewrite(identifier)  # the store must say what the node does
        elif kind in MEMBERSHIP and not self._replication.knows(origin):
            # Not (yet) a node of the fleet here: nothing it says of itself may take memory
            # here; if it is one, its record says the same when it is loaded.
            self._refused("unknown node", origin)
        elif kind == "online":
            self._replication.online(origin, data["id"], self._node, data.get("meta"))
        elif kind == "offline":
            self._replication.offline(origin, data["id"])
        elif kind == "kick":
            self._node.kick(data["id"], data["code"], data.get("reason", ""))
        elif kind == "hello":  # a node (re)joined; its state is in the store
            self._link.stats["hellos"] += 1
            self._publisher.peer(origin)
            if not self._replication.announced(origin):
                self._refused("too many hellos", origin)
            elif not self._reloading:
                self._reloading = True
                self._node.spawn(self._reload, name="wsfleet backplane reload")
            # It may have been away when this node last announced its count.
            self._publisher.want_tally()
        # A tally has done its work in the link (it follows each origin's count).
        if self._view.counts["refused"] != self._refusals:
            self._refusals = self._view.counts["refused"]
            self._link.notice("view full", self._link.heard_at, f"{origin}: {kind}")

    def _refused(self, reason: str, origin: str) -> None:
        stats = self._link.stats
        stats[f"refused: {reason}"] += 1
        stats["refused"] += 1
        self._refusals += 1
        self._link.notice(reason, self._link.heard_at, origin)

    async def leases(self, session: StoreSession, live: set[str]) -> None:
        for gone in self._replication.keep(live):
            logger.info("%r: node %s expired", self._link, gone)
            self._link.stats["nodes expired"] += 1
        await self._replication.load_new(session, live)
        await self._replication.refresh(session, self._backplane.refresh_after)

    async def record(self, session: StoreSession, identifier: str) -> None:
        await self._replication.record(session, identifier, self._node)

    async def _reload(self) -> None:
        """Load the records of the nodes that said hello: one task at a time, however many
        hellos come (each of its own would open a connection to the store)."""
        try:
            unknown = await self._replication.reload_announced(HELLO_LINGER)
        except Exception as exc:
            logger.warning("%r: could not load the nodes that said hello: %r", self._link, exc)
        else:
            for _ in range(unknown):
                self._refused("hello of no node with a lease", "?")
        finally:
            self._reloading = False
