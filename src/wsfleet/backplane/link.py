"""The link: one node's connection to the store, kept up for the node's whole life.

The link is itself a connection with a lifecycle, driven by the same state machine as every
socket: RECONNECTING while dialling, CONNECTED, ERROR on a failure, then RECONNECTING again
after the retry policy's delay. While it is down, local delivery goes on and what is for
the other nodes waits in the publisher's bounded queue, or is refused and counted.

Each connected life is one session of the store, shared by three tasks:

* the publisher's loop (``publisher``), the session's one writer;
* the receive loop: this node's own envelopes are skipped, malformed ones counted, each
  origin's count followed (a jump is counted as sends lost in transit, ``accounting``), and
  the rest handed to the owner (``LinkReports.received``);
* the heartbeat: this node's lease is extended and the nodes holding one are read.

Before a life is CONNECTED the link resynchronises: the owner writes this node's whole
record and reloads the others', and a ``hello`` tells the others to reload this one. The link
knows what envelopes are, not what they mean: what the store must hold of this node and what
another node's envelope changes here are the owner's (the ``Backplane``'s), which the link
reaches only through ``LinkReports``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Final, Protocol

import anyio
import anyio.abc

from .._runtime.loop import loop_clock
from ..errors import MalformedEnvelope
from ..fsm.clock import MonotonicClock
from ..fsm.machine import FleetMachine, Lifecycle, StateChange
from ..fsm.states import ConnectionState
from ..policies.retry import RetryPolicy
from .accounting import IMPLAUSIBLE, Drops, Notices, Receipts
from .publisher import Publisher, Records
from .signing import PREFIX, SIGNATURE_ROOM, Freshness, Rejected, Signing, Stamp
from .store import Store, StoreSession
from .wire import Envelope, Header, check_body, check_size, read_header

__all__ = ["DEFAULT_LINK_POLICY", "FORGET_ORIGINS_AFTER", "Link", "LinkReports"]

logger = logging.getLogger("wsfleet.backplane")

C = ConnectionState.CONNECTED
E = ConnectionState.ERROR
R = ConnectionState.RECONNECTING
D = ConnectionState.DISCONNECTED

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


class LinkReports(Records, Protocol):
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
        signing: Signing | None = None,
        max_nodes: int = 1024,
    ) -> None:
        self.store = store
        self.namespace = namespace
        self.node_id = node_id
        self.heartbeat_interval = heartbeat_interval
        self.node_ttl = node_ttl
        self.op_timeout = op_timeout
        self.max_message_size = max_message_size
        self.stats: Counter[str] = Counter()
        self.lifecycle = Lifecycle(retry_policy)
        self.drop = Drops(self.stats, self)
        #: What this node publishes: the owner hands it sends and membership changes.
        self.publisher = Publisher(
            self.lifecycle,
            self.stats,
            self.drop,
            namespace=namespace,
            node_id=node_id,
            buffer=buffer,
            max_pending=max_pending,
            op_timeout=op_timeout,
            max_message_size=max_message_size,
            signing=signing,
            max_peers=max_nodes,
        )
        #: The keys a frame must be signed with; ``None``: envelopes travel in the clear.
        self.signing = signing
        #: The latest signed frame of each origin (a frame heard again is refused).
        self._fresh = Freshness(max_nodes)
        #: Log lines for refused messages, a few per reason however many there are.
        self.notice = Notices(self)
        self._retry_delay: float | None = None
        self._machine = FleetMachine()
        self._stop: anyio.CancelScope | None = None
        self._stopped = anyio.Event()
        #: What this node heard of the other nodes' sends.
        self._receipts = Receipts(max_nodes)
        #: The time at the last heartbeat: when an envelope is heard, near enough to forget
        #: origins silent for an hour, and cheaper than reading the clock per envelope.
        self._heard_at = 0.0

    def __repr__(self) -> str:
        return f"<Backplane {self.namespace}/{self.node_id} {self.lifecycle.state.name}>"

    @property
    def state(self) -> ConnectionState:
        return self.lifecycle.state

    @property
    def heard_at(self) -> float:
        """The time at the last heartbeat (near enough to rate-limit log lines)."""
        return self._heard_at

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
        self.publisher.started()
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
                tg.start_soon(self.publisher.run, session, reports)
                tg.start_soon(self._heartbeat, session, reports)

    async def _resync(self, session: StoreSession, reports: LinkReports) -> None:
        """Re-assert this node's membership, reload the others', announce ourselves."""
        publisher = self.publisher
        await reports.reassert(session)
        publisher.records_rewritten()
        live = await session.live_nodes()
        publisher.reconnected(live, grace=self.node_ttl)
        await reports.reload(session, live)
        await publisher.hello(session)

    # -- the lease ---------------------------------------------------------------------------

    async def _heartbeat(self, session: StoreSession, reports: LinkReports) -> None:
        while True:
            with anyio.fail_after(self.op_timeout):
                await session.beat(self.node_id, self.node_ttl)
                live = await session.live_nodes()
            self.publisher.leases(live)
            await reports.leases(session, live)
            if self.publisher.unannounced():
                self.publisher.want_tally()  # the last send may be the one a receiver missed
            self._receipts.forget(self._heard_at - FORGET_ORIGINS_AFTER)
            self._fresh.forget(time.time())
            await anyio.sleep(self.heartbeat_interval)
            self._heard_at = anyio.current_time()

    # -- receiving ---------------------------------------------------------------------------

    async def _receive(self, messages: AsyncIterator[bytes], reports: LinkReports) -> None:
        signed = self.signing is not None
        largest = self.max_message_size + SIGNATURE_ROOM
        async for raw in messages:
            stamp: Stamp | None = None
            if len(raw) > largest:  # before anything parses it: a bound only holds unread
                self._refused("too large", f"{len(raw)} bytes")
                continue
            if signed or raw.startswith(PREFIX):
                # Nothing of a frame is read before its signature is checked.
                try:
                    raw, stamp = self._open(raw)
                except Rejected as exc:
                    self._refused(exc.reason, exc)
                    continue
            try:
                header, body = read_header(self.namespace, raw)
                if header.node == self.node_id:
                    continue  # this node's own, back from the channel
                if stamp is not None:
                    self._fresh.check(header, stamp)
                check_size(header, raw, self.max_message_size)
                envelope = check_body(header, body)
            except Rejected as exc:
                self._refused(exc.reason, exc)
                continue
            except MalformedEnvelope as exc:
                self.stats["malformed"] += 1
                # Logged as refusals are, once per period with a count: anyone who can
                # publish on the bus could otherwise fill the log (and slow the node) at will.
                self.notice("malformed", self._heard_at, exc)
                if isinstance(exc.header, Header):  # its header was sound, the rest not
                    self._unreadable(exc.header)
                continue
            self.stats["received"] += 1
            new = self._arrived(header)
            if new is None:
                continue  # numbered implausibly far ahead: refused and counted
            if not new:
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

    def _open(self, raw: bytes) -> tuple[bytes, Stamp]:
        if self.signing is None:
            raise Rejected("signed, no key here", "this node has no secrets")
        return self.signing.open(raw, time.time())

    def _refused(self, reason: str, detail: object) -> None:
        """A frame refused before its envelope was read: its origin and kind are unknown.

        Forged, unsigned or signed with another key, it counts as dropped (``"dropped:
        <reason>"``). Replayed or stale, it does not: it is a copy of a frame that was
        received, or will be counted as missed when its origin's next frame shows the gap.
        """
        if reason in ("replayed", "stale", "too large"):
            self.stats[reason] += 1
        else:
            self.stats[f"dropped: {reason}"] += 1
            self.stats["dropped"] += 1
        self.notice(reason, self._heard_at, detail)

    def _unreadable(self, header: Header) -> None:
        """A send that arrived unreadable is dropped here, and counted as such (not as
        missed when the next one shows the gap)."""
        if self._arrived(header) and header.kind == "send":
            self.drop("malformed")

    def _arrived(self, header: Header) -> bool | None:
        """Follow the origin's count: count the sends it skipped; ``False`` for a send
        already received or counted, ``None`` (refused, counted) for one numbered
        implausibly far ahead of its origin (``accounting.MAX_JUMP``)."""
        new, skipped = self._receipts.arrived(header, self._heard_at)
        if skipped == IMPLAUSIBLE:
            self.stats["dropped: implausible count"] += 1
            self.stats["dropped"] += 1
            self.notice("implausible count", self._heard_at, header)
            return None
        if skipped:
            self.drop("lost in transit", skipped)
        return new

    # -- leaving -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Publish what is queued and announce the count (for up to ``op_timeout``), stop,
        remove this node's records at once; count what could not go (``Publisher.abandon``).
        """
        with anyio.CancelScope(shield=True):
            connected = self.lifecycle.state is C
            if connected:
                with anyio.move_on_after(self.op_timeout):
                    await self.publisher.settle()
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
            self.publisher.abandon()
