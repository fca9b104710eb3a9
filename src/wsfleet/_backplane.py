"""Many processes, one fleet: the backplane that carries fan-out and membership between nodes.

Each manager is a *node*. A fan-out is delivered to the node's own sockets at once, without a
round trip, and published once for the other nodes, which deliver it to theirs. Membership
changes travel the same way (``join``, ``leave``, ``online``, ``offline``) and are also written
to the *store*, with a time-to-live that the node's heartbeat keeps extending, so a node that
dies (even by SIGKILL) drops out of every other node's view when its entry expires, with no
action from anyone.

The link to the store is itself a connection with a lifecycle, driven by the same state
machine as every socket: RECONNECTING while dialling, CONNECTED, ERROR on a failure, then
RECONNECTING again after the retry policy's delay. While it is down, local delivery goes on;
publishing never blocks the caller (it only appends to a bounded queue); messages for other
nodes that cannot be published are dropped and counted (or kept, up to ``buffer``, and sent
when the link is back). After every reconnection the node re-asserts its membership in the
store, reloads the other nodes' from it, and resubscribes.

A send this node accepted (``send`` returned ``True``) is, on every other node, delivered or
counted as dropped, once: the sender numbers its sends and each receiver counts the numbers
it missed (``_accounting`` explains how, and why the sender cannot).

``Store`` is what a concrete backplane provides (Redis in ``wsfleet.adapters.redis``; an
in-process hub here, for tests and for several managers in one process). The logic above is
shared by all of them.
"""

from __future__ import annotations

import logging
import secrets
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectSendStream

from ._accounting import Receipts, SendNumbers
from ._cluster import ClusterView
from ._runtime.loop import loop_clock
from ._wire import (
    Envelope,
    Header,
    Kind,
    MalformedEnvelope,
    check_body,
    check_size,
    encode,
    encoded_size,
    read_header,
    send_data,
)
from .errors import InvalidArgument, MessageTooLarge, WrongType
from .fsm.clock import MonotonicClock
from .fsm.machine import FleetMachine, Lifecycle, StateChange
from .fsm.states import ConnectionState
from .policies.retry import RetryPolicy

if TYPE_CHECKING:
    from ._manager import ConnectionManager

__all__ = ["Backplane", "InMemoryHub", "Store"]

logger = logging.getLogger("wsfleet.backplane")

C = ConnectionState.CONNECTED
E = ConnectionState.ERROR
R = ConnectionState.RECONNECTING
D = ConnectionState.DISCONNECTED

#: Envelopes that change membership; each is written to the store before it is published.
_MEMBERSHIP: Final = frozenset(("online", "offline", "join", "leave"))

#: How often a message that no other node heard is published again while they may be
#: resubscribing (see ``Backplane._unheard``).
UNHEARD_RETRY: Final = 0.01

#: The most messages one publish round trip carries.
MAX_BATCH: Final = 256

#: The default bound on one envelope, in bytes. Redis disconnects a pub/sub subscriber whose
#: output buffer passes 32 MiB, or stays above 8 MiB for a minute (its default
#: ``client-output-buffer-limit pubsub``); one message far below both leaves room for a burst.
#: A message of the manager's default limit (1 MiB) fits whether bytes (base64: 1.4 MiB) or
#: text (JSON escapes make it larger only for control characters, six bytes each).
DEFAULT_MAX_MESSAGE_SIZE: Final = 4 * 1024 * 1024

#: What ``check_message`` keeps, within the bound, for the rest of the envelope: its header
#: and the fan-out's targets. An envelope still too large when built (thousands of targets)
#: is dropped and counted by the sender ("too large for the backplane").
ENVELOPE_ROOM: Final = 4096

#: How long this node remembers the count of a node it no longer hears from. A node away
#: for longer (a partition, say) comes back as if new: the sends it made just before it
#: went are then not counted here.
FORGET_ORIGINS_AFTER: Final = 3600.0

#: The link keeps trying: a short cap on the delay brings it back soon after the store is.
#: One link per process makes a herd of a few, which the ±20 % jitter spreads enough; no
#: first spread, so a node is back (and announces what registered meanwhile) at once.
DEFAULT_LINK_POLICY: Final = RetryPolicy(
    max_attempts=1_000_000_000, base_delay=0.05, max_delay=1.0, jitter=0.2, first_delay_spread=0
)


class Store(ABC):
    """The shared medium of a backplane: a publish/subscribe bus and membership records."""

    @abstractmethod
    def session(self) -> AbstractAsyncContextManager[StoreSession]:
        """Connect; the session is usable until the block exits or an operation fails."""


class StoreSession(ABC):
    @abstractmethod
    async def publish(self, data: bytes) -> int | None:
        """Publish ``data`` to every subscriber; how many received it (this node's own
        subscription included), as Redis's ``PUBLISH`` answers, or ``None`` if the store
        cannot tell (then no message is counted as missed by a node)."""

    async def publish_many(self, data: list[bytes]) -> list[int | None]:
        """Publish several messages in order, in as few round trips as the store allows;
        ``publish``'s answer for each. If it raises, any of them may or may not be out."""
        return [await self.publish(item) for item in data]

    @abstractmethod
    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Messages published by any node (this one included), from now on."""

    @abstractmethod
    async def put_member(self, node: str, identifier: str, groups: list[str]) -> None: ...

    @abstractmethod
    async def del_member(self, node: str, identifier: str) -> None: ...

    @abstractmethod
    async def replace_node(
        self, node: str, snapshot: Mapping[str, list[str]], ttl: float
    ) -> None: ...

    @abstractmethod
    async def beat(self, node: str, ttl: float) -> None:
        """Extend ``node``'s lease on its records by ``ttl`` seconds from now."""

    @abstractmethod
    async def live_nodes(self) -> set[str]: ...

    @abstractmethod
    async def load(self, node: str) -> dict[str, list[str]]: ...

    @abstractmethod
    async def forget(self, node: str) -> None:
        """Remove ``node``'s records at once (a clean shutdown)."""


class Backplane:
    """Connects a manager to the other nodes of its fleet through a ``Store``.

    ``buffer`` keeps up to that many sends while the link is down (0: refuse and count
    them); ``max_pending`` bounds the sends waiting to be published while it is up;
    ``op_timeout`` bounds each operation on the store. ``max_message_size`` bounds one
    envelope on the bus, in bytes: ``check_message`` refuses a larger message before the
    manager queues it, and an envelope over it from another node is malformed here.
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
    ) -> None:
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
        self.node_id = node_id if node_id is not None else secrets.token_hex(6)
        self.heartbeat_interval = float(heartbeat_interval)
        self.node_ttl = float(node_ttl)
        self.buffer = buffer
        self.max_pending = max(max_pending, buffer)
        self.op_timeout = float(op_timeout)
        self.max_message_size = max_message_size
        self.view = ClusterView()
        self.stats: Counter[str] = Counter()
        self.link = Lifecycle(retry_policy if retry_policy is not None else DEFAULT_LINK_POLICY)
        self._retry_delay: float | None = None
        self._machine = FleetMachine()
        self._manager: ConnectionManager | None = None
        self._outgoing: deque[Envelope] = deque()
        #: Identifiers whose membership changed while the link was not CONNECTED.
        self._unannounced: set[str] = set()
        self._outgoing_ready = anyio.Event()
        #: Identifiers whose record in the store must be rewritten (a mirrored join/leave).
        self._dirty: set[str] = set()
        #: Other nodes expected to hear what this node publishes (see ``_unheard``).
        self._peers: set[str] = set()
        self._grace_until = 0.0
        #: Per load of a node's record under way: the view changes made meanwhile.
        self._loads: list[list[Callable[[], None]]] = []
        self._stop: anyio.CancelScope | None = None
        self._stopped = anyio.Event()
        #: Set by the publish loop at every message it is done with (``close`` waits on it).
        self._progress = anyio.Event()
        self._up = anyio.Event()
        #: This run's numbering of its sends (a new run each time the link task starts).
        self._numbers = SendNumbers(secrets.token_hex(6))
        #: Whether a ``tally`` waits in the queue (one is enough).
        self._tally_queued = False
        #: What this node heard of the other nodes' sends.
        self._receipts = Receipts()
        #: The time at the last heartbeat: when an envelope is heard, near enough to forget
        #: origins silent for an hour, and cheaper than reading the clock per envelope.
        self._heard_at = 0.0

    def __repr__(self) -> str:
        return f"<Backplane {self.namespace}/{self.node_id} {self.link.state.name}>"

    @property
    def state(self) -> ConnectionState:
        return self.link.state

    # -- what the manager calls (all synchronous: they only enqueue) --------------------------

    def _envelope(self, kind: Kind, data: dict[str, Any]) -> Envelope:
        """An envelope to queue; its ``seq`` is set when it is published (``_take``)."""
        return Envelope(kind, self.node_id, self._numbers.run, 0, data)

    def _enqueue(self, envelope: Envelope) -> None:
        self._outgoing.append(envelope)
        self._outgoing_ready.set()

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
        queued_sends = self.stats["queued sends"]
        if self.link.state is not C:
            if queued_sends >= self.buffer:
                self._drop("link down")
                return False
        elif queued_sends >= self.max_pending:
            self._drop("publish queue full")
            return False
        self.stats["queued sends"] += 1
        self._enqueue(self._envelope("send", send_data(to, target, message, exclude)))
        return True

    def _drop(self, reason: str, count: int = 1) -> None:
        before = self.stats["dropped"]
        self.stats[f"dropped: {reason}"] += count
        self.stats["dropped"] += count
        after = self.stats["dropped"]
        # Logged at the 1st, 10th, 100th, then every 1000th drop: a flood is not a log flood.
        if any(before < t <= after for t in (1, 10, 100)) or before // 1000 < after // 1000:
            logger.warning(
                "%r: cross-node message(s) dropped (%s: %d); %d so far",
                self,
                reason,
                count,
                after,
            )

    def membership(self, kind: Kind, identifier: str, group: str | None = None) -> None:
        """Tell the others that ``identifier`` came online, went offline, joined or left."""
        if group is not None:
            # Every node holding sockets of ``identifier`` follows (``_mirror_membership``).
            self._change_view(partial(self._follow, kind, identifier, group, None))
        if self.link.state is not C:
            # Re-asserted when the link is back: by the resync's snapshot, and, for changes
            # made while the resync awaits the store, from this set once CONNECTED.
            self._unannounced.add(identifier)
            return
        data: dict[str, Any] = {"id": identifier}
        if group is not None:
            data["group"] = group
        self._enqueue(self._envelope(kind, data))

    def kick(self, identifier: str, code: int, reason: str) -> None:
        if self.link.state is not C:
            self._drop("link down")
            return
        self._enqueue(self._envelope("kick", {"id": identifier, "code": code, "reason": reason}))

    def _follow(self, kind: Kind, identifier: str, group: str, origin: str | None) -> None:
        """Groups belong to the identifier: a join or leave holds on every node it is on."""
        nodes = self.view.presence(identifier)
        if origin is not None:
            nodes.add(origin)
        for node in nodes:
            if kind == "join":
                self.view.join(node, identifier, group)
            else:
                self.view.leave(node, identifier, group)

    # -- the link ----------------------------------------------------------------------------

    def _link_changed(self, change: StateChange) -> None:
        old = change.old.name if change.old else "new"
        log = logger.warning if change.new is E else logger.info
        log("%r: link %s -> %s (%s)", self, old, change.new.name, change.reason)
        self.stats[f"link {change.new.name.lower()}"] += 1
        if change.new is C:
            self._up.set()
        elif change.old is C:
            self._up = anyio.Event()

    def _link_moved(self, changes: tuple[StateChange, ...] | StateChange) -> None:
        """Act on what the link's machine returned: log each change, note the retry delay."""
        for change in changes if isinstance(changes, tuple) else (changes,):
            self._link_changed(change)
            if change.retry_in is not None:
                self._retry_delay = change.retry_in

    async def run(
        self,
        manager: ConnectionManager,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep the link up for the manager's whole life (a task of the manager)."""
        self._manager = manager
        self._machine.clock = MonotonicClock(loop_clock())
        self._outgoing_ready = anyio.Event()
        self._up = anyio.Event()
        self._link_moved(self._machine.start(self.link, R, "connecting"))
        self._stopped = anyio.Event()
        self._stop = anyio.CancelScope()
        task_status.started()
        try:
            with self._stop:  # cancelled by ``close``
                await self._keep_up()
        finally:
            self._stopped.set()

    async def _keep_up(self) -> None:
        while True:
            try:
                await self._connected_life()
            except BaseException as exc:
                error = self._failure(exc)
                if self.link.state in (C, R):
                    self._link_moved(
                        self._machine.request(self.link, E, f"{type(error).__name__}: {error}")
                    )
            if self.link.state is not E:
                break  # stopped
            delay = self._retry_delay or 0.0
            await anyio.sleep(delay)
            self._link_moved(self._machine.retry_due(self.link))
            if self.link.state is not R:
                logger.error("%r: giving up on the backplane link", self)
                break

    def _failure(self, exc: BaseException) -> Exception:
        """The error that ended a connected life; cancellation and the like go on up.

        A store client torn down by a cancellation may add its own errors to the group
        that carries the cancellation: the cancellation wins, the rest is only logged.
        """
        cancelled_class = anyio.get_cancelled_exc_class()
        if isinstance(exc, BaseExceptionGroup):
            cancelled, rest = exc.split(cancelled_class)
            if cancelled is not None:
                if rest is not None:
                    logger.debug("%r: errors while cancelled: %r", self, rest)
                raise cancelled
            assert rest is not None
            while isinstance(rest, BaseExceptionGroup) and rest.exceptions:
                rest = rest.exceptions[0]  # the task that failed first says why
            exc = rest
        if not isinstance(exc, Exception):
            raise exc
        return exc

    async def _connected_life(self) -> None:
        async with self.store.session() as session, session.subscribe() as messages:
            self._heard_at = anyio.current_time()
            with anyio.fail_after(self.op_timeout * 3):
                await self._resync(session)
            self._link_moved(self._machine.request(self.link, C, "connected"))
            self._announce_unannounced()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._receive, messages)
                tg.start_soon(self._publish_loop, session)
                tg.start_soon(self._heartbeat, session)

    def _announce_unannounced(self) -> None:
        """Announce what changed while the link was down, as the registry has it now."""
        manager = self._manager
        assert manager is not None
        registry = manager._registry
        changed, self._unannounced = self._unannounced, set()
        for identifier in sorted(changed):
            if identifier in registry.by_identifier:
                self.membership("online", identifier)
                for group in sorted(registry.memberships.get(identifier, ())):
                    self.membership("join", identifier, group)
            else:
                self.membership("offline", identifier)

    async def _resync(self, session: StoreSession) -> None:
        """Re-assert this node's membership, reload the others', announce ourselves."""
        manager = self._manager
        assert manager is not None
        registry = manager._registry
        snapshot = {
            identifier: sorted(registry.memberships.get(identifier, ()))
            for identifier in registry.by_identifier
        }
        # The snapshot says what changed while the link was down, and the others reload it
        # when they hear the hello below: only what changes from here on (while this awaits
        # the store) is still to announce one by one. Announcing the whole outage's changes
        # again, two round trips each, held the newest back by seconds after a long outage.
        self._unannounced.clear()
        await session.replace_node(self.node_id, snapshot, self.node_ttl)
        self._dirty.clear()
        live = await session.live_nodes()
        # The others may be reconnecting too (a restarted Redis has no leases at all): they
        # stay expected listeners for a lease's length before their absence counts.
        self._grace_until = anyio.current_time() + self.node_ttl
        self._peers |= live - {self.node_id}
        for node in self.view.nodes() - live:
            self.view.drop(node)
        for node in live - {self.node_id}:
            await self._load(session, node)
        # Membership deltas queued while down are stale: the snapshot above replaced them.
        # So is a tally: the hello announces the count.
        self._outgoing = deque(e for e in self._outgoing if e.kind == "send")
        self._tally_queued = False
        hello = Envelope("hello", self.node_id, self._numbers.run, self._numbers.sent)
        await session.publish(encode(self.namespace, hello))
        self._numbers.published(hello.header)

    def _unheard(self, receivers: int | None) -> bool:
        """Whether a publish that no other node heard should wait and go again: while the
        others may still be resubscribing, after this node's link came back (the store
        restarted, say), up to ``node_ttl``. A buffered message is thus not spent on an
        empty channel."""
        return (
            receivers is not None
            and receivers <= 1
            and bool(self._peers)
            and anyio.current_time() < self._grace_until
        )

    def _leases(self, live: set[str]) -> None:
        """The store's live nodes, read by the heartbeat: update the expected listeners."""
        self._peers |= live - {self.node_id}
        if anyio.current_time() >= self._grace_until:
            self._peers &= live

    def _batch(self) -> list[Envelope]:
        """What to publish next, in one round trip: the sends at the head of the queue (up
        to ``MAX_BATCH``), or a membership change alone (it is recorded first). One message
        at a time while the others may still be resubscribing (see ``_unheard``)."""
        head = self._outgoing[0]
        if head.kind != "send" or (self._peers and anyio.current_time() < self._grace_until):
            return [head]
        batch: list[Envelope] = []
        for envelope in self._outgoing:
            if envelope.kind != "send" or len(batch) == MAX_BATCH:
                break
            batch.append(envelope)
        return batch

    async def _publish_loop(self, session: StoreSession) -> None:
        while True:
            while self._outgoing:
                head = self._outgoing[0]
                if head.kind in _MEMBERSHIP:
                    # Written before it is announced: a node that loads this one's record
                    # after applying the announcement finds the change in it.
                    await self._record(session, head.data["id"])
                batch = self._take(self._batch())
                if batch:
                    await self._publish(session, batch)
                self._progress.set()
            while self._dirty and not self._outgoing:
                await self._record(session, self._dirty.pop())
            self._outgoing_ready = anyio.Event()
            if not self._outgoing and not self._dirty:
                await self._outgoing_ready.wait()

    def _take(self, envelopes: list[Envelope]) -> list[tuple[Envelope, bytes]]:
        """Take ``envelopes`` off the queue, number them and encode them.

        A send gets its number here, when it is about to be handed to the store, never
        earlier: one that cannot be (its envelope would not encode, or would be over the
        bound) is dropped and counted here, and the others never see a gap for it.
        """
        taken: list[tuple[Envelope, bytes]] = []
        for envelope in envelopes:
            self._outgoing.popleft()
            send = envelope.kind == "send"
            if envelope.kind == "tally":
                self._tally_queued = False
            stamped = Envelope(
                envelope.kind, envelope.node, envelope.run, self._numbers.seq(send), envelope.data
            )
            reason = None
            try:
                data = encode(self.namespace, stamped)
            except ValueError:  # a lone surrogate in an identifier or a group
                reason = "unencodable"
            else:
                if len(data) > self.max_message_size:
                    reason = "too large for the backplane"
            if reason is not None:
                if send:
                    self.stats["queued sends"] -= 1
                    self._drop(reason)
                else:
                    logger.warning("%r: could not publish %r: %s", self, envelope, reason)
                continue
            if send:
                self._numbers.sent += 1
            taken.append((stamped, data))
        return taken

    async def _publish(self, session: StoreSession, batch: list[tuple[Envelope, bytes]]) -> None:
        """Publish a numbered batch; what the store took is then the receivers' to count.

        If the publish fails, times out or is cancelled, each of these may or may not have
        reached the other nodes: nothing is counted here. The receivers count what they
        missed when this node next announces its count (the hello after reconnecting).
        """
        sends = sum(1 for envelope, _ in batch if envelope.kind == "send")
        try:
            while True:
                with anyio.fail_after(self.op_timeout):
                    answers = await session.publish_many([data for _, data in batch])
                if len(batch) == 1 and batch[0][0].kind == "send" and self._unheard(answers[0]):
                    # Nobody else got it, so publishing it again cannot duplicate it (and
                    # a receiver skips a number it has seen).
                    await anyio.sleep(UNHEARD_RETRY)
                    continue
                break
        finally:
            self.stats["queued sends"] -= sends
        self.stats["published"] += sends
        for envelope, _ in batch:
            self._numbers.published(envelope.header)

    def _want_tally(self) -> None:
        """Queue a ``tally`` (unless one waits already): the others learn this node's count."""
        if not self._tally_queued and self._numbers.sent:
            self._tally_queued = True
            self._enqueue(self._envelope("tally", {}))

    async def _record(self, session: StoreSession, identifier: str) -> None:
        """Write ``identifier``'s membership on this node to the store, where nodes that
        start later (or reload this one) read it."""
        manager = self._manager
        assert manager is not None
        with anyio.fail_after(self.op_timeout):
            if identifier in manager._registry.by_identifier:
                groups = sorted(manager._registry.memberships.get(identifier, ()))
                await session.put_member(self.node_id, identifier, groups)
            else:
                await session.del_member(self.node_id, identifier)

    async def _heartbeat(self, session: StoreSession) -> None:
        while True:
            with anyio.fail_after(self.op_timeout):
                await session.beat(self.node_id, self.node_ttl)
                live = await session.live_nodes()
            self._leases(live)
            for node in self.view.nodes() - live:
                logger.info("%r: node %s expired", self, node)
                self.stats["nodes expired"] += 1
                self.view.drop(node)
            for node in live - self.view.nodes() - {self.node_id}:
                await self._load(session, node)
            if self._numbers.unannounced():
                self._want_tally()  # the last send may be the one a receiver missed
            self._receipts.forget(self._heard_at - FORGET_ORIGINS_AFTER)
            await anyio.sleep(self.heartbeat_interval)
            self._heard_at = anyio.current_time()

    async def _receive(self, messages: AsyncIterator[bytes]) -> None:
        async for raw in messages:
            try:
                header, body = read_header(self.namespace, raw)
                if header.node == self.node_id:
                    continue  # this node's own, back from the channel
                check_size(header, raw, self.max_message_size)
                envelope = check_body(header, body)
            except MalformedEnvelope as exc:
                self.stats["malformed"] += 1
                logger.warning("%r: skipped a malformed message: %s", self, exc)
                if exc.header is not None:  # its header was sound, the rest was not
                    self._unreadable(exc.header)
                continue
            self.stats["received"] += 1
            if not self._arrived(header):
                # A send received, or counted as missed, already: delivering it now would
                # make it both. (A late publish from before the sender's link came back.)
                self.stats["late"] += 1
                continue
            try:
                self._apply(envelope)
            except Exception:
                self.stats["malformed"] += 1
                logger.exception("%r: could not apply %r", self, envelope)
                if envelope.kind == "send":
                    self._drop("malformed")

    def _unreadable(self, header: Header) -> None:
        """A send that arrived unreadable is dropped here, and counted as such (not as
        missed when the next one shows the gap)."""
        if self._arrived(header) and header.kind == "send":
            self._drop("malformed")

    def _arrived(self, header: Header) -> bool:
        """Follow the origin's count: count the sends it skipped; ``False`` for a send
        already received or counted."""
        new, skipped = self._receipts.arrived(header, self._heard_at)
        if skipped:
            self._drop("lost in transit", skipped)
        return new

    def _apply(self, envelope: Envelope) -> None:
        manager = self._manager
        assert manager is not None
        node, data = envelope.node, envelope.data
        kind = envelope.kind
        if kind == "send":
            manager._deliver_remote(data["to"], data.get("target"), envelope.message, data)
        elif kind in ("join", "leave"):
            identifier = data["id"]
            self._change_view(partial(self._follow, kind, identifier, data["group"], node))
            manager._mirror_membership(identifier, data["group"], joined=kind == "join")
            if identifier in manager._registry.by_identifier:
                self._dirty.add(identifier)  # the store must say what the registry now does
                self._outgoing_ready.set()
        elif kind == "online":
            self._change_view(partial(self._online, node, data["id"]))
        elif kind == "offline":
            self._change_view(partial(self.view.offline, node, data["id"]))
        elif kind == "kick":
            manager._kick_local(data["id"], data["code"], data.get("reason", ""))
        elif kind == "hello":  # a node (re)joined; its state is in the store
            self.stats["hellos"] += 1
            self._peers.add(node)
            manager._spawn(self._reload, node, name="wsfleet backplane reload")
            # It may have been away when this node last announced its count.
            self._want_tally()
        # A tally has done its work in ``_arrived``.

    def _online(self, node: str, identifier: str) -> None:
        if node not in self.view.presence(identifier):
            manager = self._manager
            assert manager is not None
            # The node took the identifier's groups from its own view when its first
            # socket registered (``_register``); ours says the same.
            groups = self.view.groups_of(identifier)
            groups |= manager._registry.memberships.get(identifier, set())
            self.view.online(node, identifier)
            for group in groups:
                self.view.join(node, identifier, group)

    def _change_view(self, change: Callable[[], None]) -> None:
        change()
        for changes in self._loads:
            changes.append(change)

    async def _load(self, session: StoreSession, node: str) -> None:
        """Replace what the view holds of ``node`` by its record in the store.

        The record and the envelopes come by different connections: a change applied while
        the record was on its way may be newer than the record, so it is made again on top
        of it. (A change applied before the load began is in the record already: a node
        writes its record before it publishes the change.)
        """
        changes: list[Callable[[], None]] = []
        self._loads.append(changes)
        try:
            with anyio.fail_after(self.op_timeout):
                snapshot = await session.load(node)
        finally:
            self._loads = [c for c in self._loads if c is not changes]
        self.view.replace(node, snapshot)
        for change in changes:
            change()

    async def _reload(self, node: str) -> None:
        try:
            async with self.store.session() as session:
                await self._load(session, node)
        except Exception as exc:
            logger.warning("%r: could not load node %s: %r", self, node, exc)

    async def close(self) -> None:
        """Leave the fleet cleanly: publish what is queued and announce the count (for up
        to ``op_timeout``), stop the link, remove this node's records at once.

        Sends still queued then are dropped and counted ("manager closed"). So are sends
        whose publish was cut short if the count could not be announced ("unconfirmed at
        close"): no other node would ever learn of them. That is the one count made
        without knowing: such a send may have reached a node all the same.
        """
        with anyio.CancelScope(shield=True):
            connected = self.link.state is C
            if connected:
                with anyio.move_on_after(self.op_timeout):
                    while self.link.state is C and (
                        self.stats["queued sends"] or self._numbers.unannounced()
                    ):
                        if not self.stats["queued sends"]:
                            self._want_tally()
                        self._progress = anyio.Event()
                        await self._progress.wait()
            if self.link.state is not D:
                # First, so that what the store client raises while torn down is no error.
                self._link_moved(self._machine.request(self.link, D, "manager closed"))
            if self._stop is not None:
                self._stop.cancel()  # no heartbeat may renew the lease once it is gone
                with anyio.move_on_after(self.op_timeout):
                    await self._stopped.wait()
            if connected:
                with anyio.move_on_after(self.op_timeout):
                    try:
                        async with self.store.session() as session:
                            await session.forget(self.node_id)
                    except Exception as exc:
                        logger.debug("%r: could not remove this node's records: %r", self, exc)
            for envelope in self._outgoing:
                if envelope.kind == "send":
                    self._drop("manager closed")
            self._outgoing.clear()
            self.stats["queued sends"] = 0
            unknown = self._numbers.unknown()
            if unknown:
                self._drop("unconfirmed at close", unknown)
                self._numbers.confirmed = self._numbers.sent


class InMemoryHub(Store):
    """A store inside one process: several managers, one fleet, no network.

    Useful to test a multi-node application, or to run several event loops' managers in
    one program. Node leases expire on the hub's clock exactly as they would in Redis.
    """

    def __init__(self) -> None:
        self._subscribers: list[MemoryObjectSendStream[bytes]] = []
        self.members: dict[str, dict[str, list[str]]] = {}
        self.leases: dict[str, float] = {}
        self.down = False

    @asynccontextmanager
    async def session(self) -> AsyncIterator[StoreSession]:
        if self.down:
            raise ConnectionError("the hub is down")
        yield _HubSession(self)


class _HubSession(StoreSession):
    def __init__(self, hub: InMemoryHub) -> None:
        self.hub = hub

    def _check(self) -> None:
        if self.hub.down:
            raise ConnectionError("the hub is down")

    async def publish(self, data: bytes) -> int:
        self._check()
        receivers = 0
        for stream in list(self.hub._subscribers):
            with suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                stream.send_nowait(data)
                receivers += 1
        await anyio.lowlevel.checkpoint()
        return receivers

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[bytes]]:
        self._check()
        send, receive = anyio.create_memory_object_stream[bytes](10_000)
        self.hub._subscribers.append(send)
        try:
            async with receive:
                messages = self._messages(receive)
                try:
                    yield messages
                finally:
                    await messages.aclose()  # left suspended, it would be finalised by the GC
        finally:
            self.hub._subscribers.remove(send)
            send.close()

    async def _messages(self, receive: Any) -> AsyncGenerator[bytes]:
        async for data in receive:
            self._check()
            yield data

    async def put_member(self, node: str, identifier: str, groups: list[str]) -> None:
        self._check()
        self.hub.members.setdefault(node, {})[identifier] = groups

    async def del_member(self, node: str, identifier: str) -> None:
        self._check()
        self.hub.members.get(node, {}).pop(identifier, None)

    async def replace_node(self, node: str, snapshot: Mapping[str, list[str]], ttl: float) -> None:
        self._check()
        self.hub.members[node] = dict(snapshot)
        await self.beat(node, ttl)

    async def beat(self, node: str, ttl: float) -> None:
        self._check()
        self.hub.leases[node] = anyio.current_time() + ttl

    async def live_nodes(self) -> set[str]:
        self._check()
        now = anyio.current_time()
        for node, until in list(self.hub.leases.items()):
            if until <= now:
                del self.hub.leases[node]
                self.hub.members.pop(node, None)
        return set(self.hub.leases)

    async def load(self, node: str) -> dict[str, list[str]]:
        self._check()
        return dict(self.hub.members.get(node, {}))

    async def forget(self, node: str) -> None:
        self._check()
        self.hub.leases.pop(node, None)
        self.hub.members.pop(node, None)
