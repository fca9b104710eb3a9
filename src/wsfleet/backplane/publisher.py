"""What a node publishes: one bounded queue, numbered sends, batches, records first.

The ``Publisher`` is the one writer of the link's session of the store, so everything this
node tells the others goes out in one order:

* a membership change's record is written, then the envelope that announces it (a node
  that loads this one's record after applying the announcement finds the change in it);
* sends go in batches of up to ``MAX_BATCH``, one round trip each, and get their numbers
  (``accounting``) when they are handed to the store, never earlier: a send that cannot be
  (its envelope would not encode, or would pass the bound) is dropped and counted here, and
  no receiver sees a gap for it;
* records the backplane asks to rewrite go when nothing else waits.

Publishing never blocks the caller: ``send`` only appends to the queue, within ``buffer``
while the link is down and ``max_pending`` while it is up; beyond, the send is refused and
counted.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter, deque
from typing import Any, Final, Protocol

import anyio

from ..fsm.machine import Lifecycle
from ..fsm.states import ConnectionState
from .accounting import Drops, SendNumbers
from .signing import Signing
from .store import StoreSession
from .wire import Envelope, Kind, encode, send_data

__all__ = ["MAX_BATCH", "UNHEARD_RETRY", "Publisher", "Records"]

logger = logging.getLogger("wsfleet.backplane")

C = ConnectionState.CONNECTED

#: Envelopes that change membership; each is written to the store before it is published.
MEMBERSHIP: Final = frozenset(("online", "offline", "join", "leave"))

#: How often a message that no other node heard is published again while they may be
#: resubscribing (see ``Publisher._unheard``).
UNHEARD_RETRY: Final = 0.01

#: The most messages one publish round trip carries.
MAX_BATCH: Final = 256


class Records(Protocol):
    """Who writes an identifier's record when the publisher asks (the backplane)."""

    async def record(self, session: StoreSession, identifier: str) -> None:
        """Write what the store must hold of ``identifier`` on this node (bounded in time:
        the publish loop waits for it)."""


class Publisher:
    """The queue of what this node publishes, and the loop that publishes it."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        stats: Counter[str],
        drop: Drops,
        *,
        namespace: str,
        node_id: str,
        buffer: int,
        max_pending: int,
        op_timeout: float,
        max_message_size: int,
        signing: Signing | None = None,
        max_peers: int = 1024,
    ) -> None:
        #: The link's lifecycle, read to choose the bound of the queue.
        self.lifecycle = lifecycle
        self.stats = stats
        self.drop = drop
        self.namespace = namespace
        self.node_id = node_id
        self.buffer = buffer
        self.max_pending = max_pending
        self.op_timeout = op_timeout
        self.max_message_size = max_message_size
        self._outgoing: deque[Envelope] = deque()
        self._outgoing_ready = anyio.Event()
        #: Identifiers whose record in the store must be rewritten (``rewrite``).
        self._rewrite: set[str] = set()
        #: Other nodes expected to hear what this node publishes (see ``_unheard``).
        self._peers: set[str] = set()
        self.max_peers = max_peers
        self._grace_until = 0.0
        #: Set by the publish loop at every message it is done with (``settle`` waits on it).
        self._progress = anyio.Event()
        #: This run's numbering of its sends (a new run each time the link task starts).
        self._numbers = SendNumbers(secrets.token_hex(6))
        #: Whether a ``tally`` waits in the queue (one is enough).
        self._tally_queued = False
        #: The keys envelopes are signed with (``signing``); ``None``: sent in the clear.
        self.signing = signing
        #: Signed frames of this run so far: the number of the latest (``Signing.seal``).
        self._frames = 0

    def __repr__(self) -> str:
        return f"<Backplane {self.namespace}/{self.node_id} {self.lifecycle.state.name}>"

    def started(self) -> None:
        """The link task started: wake-ups from now on go to an event of its loop."""
        self._outgoing_ready = anyio.Event()

    # -- what is handed over (all synchronous: they only enqueue) ------------------------------

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
        """Have ``identifier``'s record written again once nothing else waits."""
        self._rewrite.add(identifier)
        self._outgoing_ready.set()

    def want_tally(self) -> None:
        """Queue a ``tally`` (unless one waits already): the others learn this node's count."""
        if not self._tally_queued and self._numbers.sent:
            self._tally_queued = True
            self._enqueue(self._envelope("tally", {}))

    def unannounced(self) -> int:
        """Sends that no later envelope has told the others about (yet)."""
        return self._numbers.unannounced()

    def _envelope(self, kind: Kind, data: dict[str, Any]) -> Envelope:
        """An envelope to queue; its ``seq`` is set when it is published (``_take``)."""
        return Envelope(kind, self.node_id, self._numbers.run, 0, data)

    def _enqueue(self, envelope: Envelope) -> None:
        self._outgoing.append(envelope)
        self._outgoing_ready.set()

    # -- who listens -------------------------------------------------------------------------

    def peer(self, node: str) -> None:
        """``node`` said hello: it listens now, and should hear what this node publishes
        (up to ``max_peers``: a hello is anyone's to publish; the heartbeat keeps only
        the nodes that hold a lease)."""
        if len(self._peers) < self.max_peers:
            self._peers.add(node)

    def reconnected(self, live: set[str], grace: float) -> None:
        """The link is back; the nodes in ``live`` hold a lease. They may be reconnecting
        too (a restarted Redis has no leases at all): they stay expected listeners for
        ``grace`` seconds before their absence counts."""
        self._grace_until = anyio.current_time() + grace
        self._peers |= live - {self.node_id}

    def leases(self, live: set[str]) -> None:
        """The store's live nodes, read by the heartbeat: update the expected listeners."""
        self._peers |= live - {self.node_id}
        if anyio.current_time() >= self._grace_until:
            self._peers &= live

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

    # -- the link's session --------------------------------------------------------------------

    def records_rewritten(self) -> None:
        """This node's whole record was written again: no single one needs rewriting."""
        self._rewrite.clear()

    async def hello(self, session: StoreSession) -> None:
        """Announce this node and its count, after a reconnection.

        Membership changes queued while the link was down are stale (the record written on
        reconnecting replaced them), and so is a tally (the hello announces the count).
        """
        self._outgoing = deque(e for e in self._outgoing if e.kind == "send")
        self._tally_queued = False
        hello = Envelope("hello", self.node_id, self._numbers.run, self._numbers.sent)
        await session.publish(self._seal(encode(self.namespace, hello)))
        self._numbers.published(hello.header)

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

    async def run(self, session: StoreSession, records: Records) -> None:
        """Publish what is queued through ``session``, for as long as it lives."""
        while True:
            while self._outgoing:
                head = self._outgoing[0]
                if head.kind in MEMBERSHIP:
                    # Written before it is announced: a node that loads this one's record
                    # after applying the announcement finds the change in it.
                    await records.record(session, head.data["id"])
                batch = self._take(self._batch())
                if batch:
                    await self._publish(session, batch)
                self._progress.set()
            while self._rewrite and not self._outgoing:
                await records.record(session, self._rewrite.pop())
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
            taken.append((stamped, self._seal(data)))
        return taken

    def _seal(self, data: bytes) -> bytes:
        """The bytes to publish: the envelope, in a signed frame if signing is on (the
        frames are numbered in the order they are published)."""
        if self.signing is None:
            return data
        self._frames += 1
        return self.signing.seal(data, self._frames, time.time())

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

    # -- leaving -------------------------------------------------------------------------------

    async def settle(self) -> None:
        """While the link is up, wait until every queued send is published and the count
        announced (bound it with a timeout)."""
        while self.lifecycle.state is C and (
            self.stats["queued sends"] or self._numbers.unannounced()
        ):
            if not self.stats["queued sends"]:
                self.want_tally()
            self._progress = anyio.Event()
            await self._progress.wait()

    def abandon(self) -> None:
        """The link is gone for good: count the sends still queued ("manager closed"), and
        those whose publish was cut short and never announced ("unconfirmed at close")."""
        for envelope in self._outgoing:
            if envelope.kind == "send":
                self.drop("manager closed")
        self._outgoing.clear()
        self.stats["queued sends"] = 0
        unknown = self._numbers.unknown()
        if unknown:
            self.drop("unconfirmed at close", unknown)
            self._numbers.confirmed = self._numbers.sent
