"""The link: one node's connection to the store, and everything that travels on it.

The link is itself a connection with a lifecycle, driven by the same state machine as every
socket: RECONNECTING while dialling, CONNECTED, ERROR on a failure, then RECONNECTING again
after the retry policy's delay. While it is down, local delivery goes on; publishing never
blocks the caller (it only appends to a bounded queue); messages for other nodes that cannot
be published are dropped and counted (or kept, up to ``buffer``, and sent when the link is
back).

While it is up, three tasks share one session of the store:

* the publish loop, the session's one writer: a membership change's record first, then the
  envelope that announces it; sends in batches of up to ``MAX_BATCH``, numbered as they are
  handed to the store (``accounting``); records the owner asks to rewrite when nothing else
  waits;
* the receive loop: this node's own envelopes and malformed ones are skipped (the latter
  counted), each origin's count is followed (a jump is counted as sends lost in transit),
  and the rest goes to the owner (``LinkReports.received``);
* the heartbeat: this node's lease is extended, the nodes holding one are read, and a
  ``tally`` announces this node's count after a send no later envelope announced.

The link knows what envelopes are, not what they mean: the owner (the ``Backplane``) says
what the store must hold of this node and applies what other nodes say, through
``LinkReports``; the link never reaches for it otherwise.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter, deque
from collections.abc import AsyncIterator
from typing import Any, Final, Protocol

import anyio
import anyio.abc

from .._runtime.loop import loop_clock
from ..errors import MalformedEnvelope
from ..fsm.clock import MonotonicClock
from ..fsm.machine import FleetMachine, Lifecycle, StateChange
from ..fsm.states import ConnectionState
from ..policies.retry import RetryPolicy
from .accounting import Receipts, SendNumbers
from .store import Store, StoreSession
from .wire import (
    Envelope,
    Header,
    Kind,
    check_body,
    check_size,
    encode,
    read_header,
    send_data,
)

__all__ = ["DEFAULT_LINK_POLICY", "FORGET_ORIGINS_AFTER", "MAX_BATCH", "Link", "LinkReports"]

logger = logging.getLogger("wsfleet.backplane")

C = ConnectionState.CONNECTED
E = ConnectionState.ERROR
R = ConnectionState.RECONNECTING
D = ConnectionState.DISCONNECTED

#: Envelopes that change membership; each is written to the store before it is published.
MEMBERSHIP: Final = frozenset(("online", "offline", "join", "leave"))

#: How often a message that no other node heard is published again while they may be
#: resubscribing (see ``Link._unheard``).
UNHEARD_RETRY: Final = 0.01

#: The most messages one publish round trip carries.
MAX_BATCH: Final = 256

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


class LinkReports(Protocol):
    """What the link tells its owner, and the records it asks the owner to write.

    Each ``session`` is the link's current one; the owner uses it and keeps it no longer.
    """

    async def reassert(self, session: StoreSession) -> None:
        """The link is back: write everything the store must hold of this node."""

    async def reload(self, session: StoreSession, live: set[str]) -> None:
        """The link is back: the nodes in ``live`` hold a lease; replace what is known of
        the others by their records."""

    def connected(self) -> None:
        """The link is CONNECTED: announce what changed while it was not."""

    def received(self, envelope: Envelope) -> None:
        """Another node's envelope, sound and new (not received or counted before)."""

    async def leases(self, session: StoreSession, live: set[str]) -> None:
        """The heartbeat read the nodes holding a lease: forget those gone, load new ones."""

    async def record(self, session: StoreSession, identifier: str) -> None:
        """Write what the store must hold of ``identifier`` on this node (bounded in time:
        the publish loop waits for it)."""


class Link:
    """One node's link to a ``Store``; the ``Backplane`` builds it and runs it."""

    def __init__(
        self,
        store: Store,
        *,
        namespace: str,
        node_id: str,
        retry_policy: RetryPolicy,
        heartbeat_interval: float,
        node_ttl: float,
        buffer: int,
        max_pending: int,
        op_timeout: float,
        max_message_size: int,
    ) -> None:
        self.store = store
        self.namespace = namespace
        self.node_id = node_id
        self.heartbeat_interval = heartbeat_interval
        self.node_ttl = node_ttl
        self.buffer = buffer
        self.max_pending = max_pending
        self.op_timeout = op_timeout
        self.max_message_size = max_message_size
        self.stats: Counter[str] = Counter()
        self.lifecycle = Lifecycle(retry_policy)
        self._retry_delay: float | None = None
        self._machine = FleetMachine()
        self._outgoing: deque[Envelope] = deque()
        self._outgoing_ready = anyio.Event()
        #: Identifiers whose record in the store must be rewritten (``rewrite``).
        self._rewrite: set[str] = set()
        #: Other nodes expected to hear what this node publishes (see ``_unheard``).
        self._peers: set[str] = set()
        self._grace_until = 0.0
        self._stop: anyio.CancelScope | None = None
        self._stopped = anyio.Event()
        #: Set by the publish loop at every message it is done with (``close`` waits on it).
        self._progress = anyio.Event()
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
        return f"<Backplane {self.namespace}/{self.node_id} {self.lifecycle.state.name}>"

    @property
    def state(self) -> ConnectionState:
        return self.lifecycle.state

    # -- what the owner hands over (all synchronous: they only enqueue) ------------------------

    def send(
        self, to: str, target: str | list[str] | None, message: str | bytes, exclude: list[str]
    ) -> bool:
        """Queue a fan-out for the other nodes: ``True`` if accepted, ``False`` if dropped
        here and counted (the link is down and the buffer full, the queue is full)."""
        queued_sends = self.stats["queued sends"]
        if self.lifecycle.state is not C:
            if queued_sends >= self.buffer:
                self.drop("link down")
                return False
        elif queued_sends >= self.max_pending:
            self.drop("publish queue full")
            return False
        self.stats["queued sends"] += 1
        self._enqueue(self._envelope("send", send_data(to, target, message, exclude)))
        return True

    def enqueue(self, kind: Kind, data: dict[str, Any]) -> None:
        """Queue an envelope other than a send (a membership change, a kick)."""
        self._enqueue(self._envelope(kind, data))

    def rewrite(self, identifier: str) -> None:
        """Have ``identifier``'s record written again (``LinkReports.record``) once nothing
        else waits to be published."""
        self._rewrite.add(identifier)
        self._outgoing_ready.set()

    def peer(self, node: str) -> None:
        """``node`` said hello: it listens now, and should hear what this node publishes."""
        self._peers.add(node)

    def want_tally(self) -> None:
        """Queue a ``tally`` (unless one waits already): the others learn this node's count."""
        if not self._tally_queued and self._numbers.sent:
            self._tally_queued = True
            self._enqueue(self._envelope("tally", {}))

    def drop(self, reason: str, count: int = 1) -> None:
        """Count cross-node sends that will never be delivered, by reason."""
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

    def _envelope(self, kind: Kind, data: dict[str, Any]) -> Envelope:
        """An envelope to queue; its ``seq`` is set when it is published (``_take``)."""
        return Envelope(kind, self.node_id, self._numbers.run, 0, data)

    def _enqueue(self, envelope: Envelope) -> None:
        self._outgoing.append(envelope)
        self._outgoing_ready.set()

    # -- the lifecycle -----------------------------------------------------------------------

    def _link_changed(self, change: StateChange) -> None:
        old = change.old.name if change.old else "new"
        log = logger.warning if change.new is E else logger.info
        log("%r: link %s -> %s (%s)", self, old, change.new.name, change.reason)
        self.stats[f"link {change.new.name.lower()}"] += 1

    def _moved(self, changes: tuple[StateChange, ...] | StateChange) -> None:
        """Act on what the link's machine returned: log each change, note the retry delay."""
        for change in changes if isinstance(changes, tuple) else (changes,):
            self._link_changed(change)
            if change.retry_in is not None:
                self._retry_delay = change.retry_in

    async def run(
        self,
        reports: LinkReports,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep the link up until ``close``, telling ``reports`` what it hears."""
        self._machine.clock = MonotonicClock(loop_clock())
        self._outgoing_ready = anyio.Event()
        self._moved(self._machine.start(self.lifecycle, R, "connecting"))
        self._stopped = anyio.Event()
        self._stop = anyio.CancelScope()
        task_status.started()
        try:
            with self._stop:  # cancelled by ``close``
                await self._keep_up(reports)
        finally:
            self._stopped.set()

    async def _keep_up(self, reports: LinkReports) -> None:
        while True:
            try:
                await self._connected_life(reports)
            except BaseException as exc:
                error = self._failure(exc)
                if self.lifecycle.state in (C, R):
                    self._moved(
                        self._machine.request(self.lifecycle, E, f"{type(error).__name__}: {error}")
                    )
            if self.lifecycle.state is not E:
                break  # stopped
            delay = self._retry_delay or 0.0
            await anyio.sleep(delay)
            self._moved(self._machine.retry_due(self.lifecycle))
            if self.lifecycle.state is not R:
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

    async def _connected_life(self, reports: LinkReports) -> None:
        async with self.store.session() as session, session.subscribe() as messages:
            self._heard_at = anyio.current_time()
            with anyio.fail_after(self.op_timeout * 3):
                await self._resync(session, reports)
            self._moved(self._machine.request(self.lifecycle, C, "connected"))
            reports.connected()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._receive, messages, reports)
                tg.start_soon(self._publish_loop, session, reports)
                tg.start_soon(self._heartbeat, session, reports)

    async def _resync(self, session: StoreSession, reports: LinkReports) -> None:
        """Re-assert this node's membership, reload the others', announce ourselves."""
        await reports.reassert(session)
        self._rewrite.clear()  # the records were all written again
        live = await session.live_nodes()
        # The others may be reconnecting too (a restarted Redis has no leases at all): they
        # stay expected listeners for a lease's length before their absence counts.
        self._grace_until = anyio.current_time() + self.node_ttl
        self._peers |= live - {self.node_id}
        await reports.reload(session, live)
        # Membership deltas queued while down are stale: the records replaced them. So is
        # a tally: the hello announces the count.
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

    # -- publishing --------------------------------------------------------------------------

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

    async def _publish_loop(self, session: StoreSession, reports: LinkReports) -> None:
        while True:
            while self._outgoing:
                head = self._outgoing[0]
                if head.kind in MEMBERSHIP:
                    # Written before it is announced: a node that loads this one's record
                    # after applying the announcement finds the change in it.
                    await reports.record(session, head.data["id"])
                batch = self._take(self._batch())
                if batch:
                    await self._publish(session, batch)
                self._progress.set()
            while self._rewrite and not self._outgoing:
                await reports.record(session, self._rewrite.pop())
            self._outgoing_ready = anyio.Event()
            if not self._outgoing and not self._rewrite:
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
                    self.drop(reason)
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

    # -- the lease ---------------------------------------------------------------------------

    async def _heartbeat(self, session: StoreSession, reports: LinkReports) -> None:
        while True:
            with anyio.fail_after(self.op_timeout):
                await session.beat(self.node_id, self.node_ttl)
                live = await session.live_nodes()
            self._leases(live)
            await reports.leases(session, live)
            if self._numbers.unannounced():
                self.want_tally()  # the last send may be the one a receiver missed
            self._receipts.forget(self._heard_at - FORGET_ORIGINS_AFTER)
            await anyio.sleep(self.heartbeat_interval)
            self._heard_at = anyio.current_time()

    # -- receiving ---------------------------------------------------------------------------

    async def _receive(self, messages: AsyncIterator[bytes], reports: LinkReports) -> None:
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
                reports.received(envelope)
            except Exception:
                self.stats["malformed"] += 1
                logger.exception("%r: could not apply %r", self, envelope)
                if envelope.kind == "send":
                    self.drop("malformed")

    def _unreadable(self, header: Header) -> None:
        """A send that arrived unreadable is dropped here, and counted as such (not as
        missed when the next one shows the gap)."""
        if self._arrived(header) and header.kind == "send":
            self.drop("malformed")

    def _arrived(self, header: Header) -> bool:
        """Follow the origin's count: count the sends it skipped; ``False`` for a send
        already received or counted."""
        new, skipped = self._receipts.arrived(header, self._heard_at)
        if skipped:
            self.drop("lost in transit", skipped)
        return new

    # -- leaving -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Leave the fleet cleanly: publish what is queued and announce the count (for up
        to ``op_timeout``), stop the link, remove this node's records at once.

        Sends still queued then are dropped and counted ("manager closed"). So are sends
        whose publish was cut short if the count could not be announced ("unconfirmed at
        close"): no other node would ever learn of them. That is the one count made
        without knowing: such a send may have reached a node all the same.
        """
        with anyio.CancelScope(shield=True):
            connected = self.lifecycle.state is C
            if connected:
                with anyio.move_on_after(self.op_timeout):
                    while self.lifecycle.state is C and (
                        self.stats["queued sends"] or self._numbers.unannounced()
                    ):
                        if not self.stats["queued sends"]:
                            self.want_tally()
                        self._progress = anyio.Event()
                        await self._progress.wait()
            if self.lifecycle.state is not D:
                # First, so that what the store client raises while torn down is no error.
                self._moved(self._machine.request(self.lifecycle, D, "manager closed"))
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
                    self.drop("manager closed")
            self._outgoing.clear()
            self.stats["queued sends"] = 0
            unknown = self._numbers.unknown()
            if unknown:
                self.drop("unconfirmed at close", unknown)
                self._numbers.confirmed = self._numbers.sent
