"""The runtime: one node's connections, and the one place a state change takes effect.

The ``Fleet`` owns the parts (registry, outbox, timers, callbacks, resumption), each built
with the little it needs (the context, a policy, this object as the protocol it reports
to), and the state machine. It is to the parts what h11's ``Connection`` is to its
``ConnectionState``: every request for a change goes to the machine, which decides and
returns the changes; ``apply`` then carries out their effects, in one order, in one
function:

1. the registry's index by state;
2. CONNECTED: the timers watch it, the outbox writes what waited;
   DISCONNECTED: what is queued is dropped and counted;
3. ERROR or DISCONNECTED: its writer stops;
4. a change that asks for a retry: the timers schedule it;
5. the callbacks' lanes get the change;
6. DISCONNECTED: the connection leaves the registry (nothing holds it any more).

Presence (``presence``) follows the registry on its own: it hears of every identifier that
comes, goes, joins or leaves, and keeps the metadata registered here.

The parts report what they see (a socket failed, a ping is due, a retry fell due, a queue
overflowed) and this object decides what follows. Nothing here validates what users pass
(the manager does) or knows other nodes (the manager's backplane does, through
``Membership``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

import anyio

from ..closecodes import (
    GOING_AWAY,
    INTERNAL_ERROR,
    MESSAGE_TOO_BIG,
    POLICY_VIOLATION,
    is_clean,
    is_final,
)
from ..errors import (
    AlreadyRegistered,
    FinalRefusal,
    InvalidArgument,
    InvalidTransition,
    MessageTooLarge,
    ResumeExpired,
    WrongType,
)
from ..fsm.machine import FleetMachine, StateChange
from ..fsm.states import HELD, ConnectionState
from ..policies.backpressure import BackpressurePolicy
from ..policies.heartbeat import HeartbeatPolicy
from ..policies.history import HistoryPolicy
from ..policies.overflow import OverflowAction, OverflowPolicy
from ..policies.ratelimit import RateLimitPolicy
from ..policies.retry import RetryPolicy
from ..presence import check_meta
from ..transport import Message, Transport, adapter_for, message_size, no_adapter
from .callbacks import Callbacks
from .connection import Connection, Reconnector
from .context import Context
from .history import Frame, History, HistoryStore
from .inbound import Inbound
from .observer import FleetObserver, ObserverHandle, Observers
from .outbox import Outbox
from .presence import Presence
from .registry import Registry, check_name
from .resumption import Resumption
from .session import RATE_LIMITED
from .timers import Timers

__all__ = ["Fleet", "Membership"]

logger = logging.getLogger("wsfleet")

C = ConnectionState.CONNECTED
I = ConnectionState.IDLE  # noqa: E741
E = ConnectionState.ERROR
R = ConnectionState.RECONNECTING
D = ConnectionState.DISCONNECTED


class Membership(Protocol):
    """Who else is told when an identifier comes and goes here (the backplane, if any)."""

    def online(self, identifier: str, meta: dict[str, Any] | None) -> Iterable[str]:
        """``identifier`` has its first socket here, or new metadata (``meta``; ``None``:
        none here): the groups it is in elsewhere."""

    def offline(self, identifier: str) -> None:
        """``identifier``'s last socket here is gone."""


class _Alone:
    """A node with no other node to tell."""

    def online(self, identifier: str, meta: dict[str, Any] | None) -> Iterable[str]:
        return ()

    def offline(self, identifier: str) -> None:
        return None


#: The membership of a node alone (the default): nobody to tell, so not called at all.
_ALONE: Membership = _Alone()


class Fleet:
    """One node's connections and their runtime; see the module docstring."""

    def __init__(
        self,
        *,
        retry_policy: RetryPolicy | None,
        heartbeat: HeartbeatPolicy | None,
        overflow: OverflowPolicy,
        resume_window: float | None,
        callback_timeout: float,
        close_timeout: float,
        backpressure: BackpressurePolicy | None = None,
        pings_optional: bool = False,
        rate_limit: RateLimitPolicy | None = None,
        max_message_size: int | None = None,
    ) -> None:
        self.context = Context()
        self.registry = Registry()
        self.machine = FleetMachine(retry_policy=retry_policy)
        self.heartbeat = heartbeat
        #: The heartbeat is the default one, not asked for: a socket that cannot be pinged
        #: is taken all the same (its server keeps it alive), not refused.
        self.pings_optional = pings_optional
        #: Every socket registered must take pings: an explicit pinging heartbeat.
        self._must_ping = (
            heartbeat is not None and heartbeat.ping_interval is not None and not pings_optional
        )
        self.overflow = overflow
        self.close_timeout = close_timeout
        self.outbox = Outbox(self.context, overflow, self, close_timeout=close_timeout)
        self.timers = Timers(self.context, heartbeat, self)
        self.callbacks = Callbacks(callback_timeout)
        self.presence = Presence(self.registry, callback_timeout)
        self.resumption = Resumption(self.context, self.machine, resume_window)
        self.inbound = Inbound(self.context, rate_limit, self, max_message_size)
        self.membership: Membership = _ALONE
        self.backpressure = backpressure
        #: Fan-out calls that waited for the writers, and the seconds they waited in all.
        self.producer_waits = 0
        self.producer_wait_seconds = 0.0
        #: The writers' progress when they were last found stalled (see ``room``).
        self._stalled_at: int | None = None
        #: Told of every fan-out (a metrics exporter); ``None``: nobody, one check per call.
        self.observer: FleetObserver | None = None
        self._observers: list[ObserverHandle] = []

    # -- lifetime ----------------------------------------------------------------------------

    def bind(self, tg: anyio.abc.TaskGroup) -> None:
        """Inside the loop: take its clock and thread, make the events, start the tasks."""
        self.context.bind(tg)
        self.machine.clock = self.context.clock
        self.outbox.bind_loop()
        self.timers.bind_loop()
        tg.start_soon(self.outbox.run, name="wsfleet flusher")
        tg.start_soon(self.timers.run, name="wsfleet timers")
        tg.start_soon(self.callbacks.run, name="wsfleet callbacks")
        tg.start_soon(self.presence.run, name="wsfleet presence")

    async def wait_idle(self) -> None:
        """Let every callback see what happened so far (bound it with a timeout)."""
        await self.presence.wait_idle()
        await self.callbacks.wait_idle()

    async def flush(self) -> None:
        """Let the writers finish what is queued (bound it with a timeout)."""
        while self.outbox.busy(self.registry):
            self.outbox.flush_soon(self.registry)
            await anyio.sleep(0.005)

    async def close_all(self) -> None:
        """Close every socket with 1001 and forget every connection."""
        conns = list(self.registry)
        async with anyio.create_task_group() as closers:
            for conn in conns:
                closers.start_soon(self.outbox.close, conn.transport, GOING_AWAY, "going away")
        for conn in conns:
            self.forget(conn, "manager closed")

    def check(self) -> None:
        """Refuse new work from another thread or outside the manager's block."""
        self.context.check()

    def add_observer(self, observer: FleetObserver) -> ObserverHandle:
        """Report every fan-out to ``observer`` from now on (see ``observer``)."""
        for name in ("fanned_out", "flushed"):
            if not callable(getattr(observer, name, None)):
                raise WrongType(f"observer must have a {name}() method, got {observer!r}")
        handle = ObserverHandle(observer, self._remove_observer)
        self._observers.append(handle)
        self._observed()
        return handle

    def _remove_observer(self, handle: ObserverHandle) -> bool:
        if handle not in self._observers:
            return False
        self._observers.remove(handle)
        self._observed()
        return True

    def _observed(self) -> None:
        """The one reference the hot paths check: nobody, the observer, or all of them."""
        observers = tuple(handle.observer for handle in self._observers)
        observer: FleetObserver | None = None
        if len(observers) == 1:
            observer = observers[0]
        elif observers:
            observer = Observers(observers)
        self.observer = self.outbox.observer = observer

    # -- registration ------------------------------------------------------------------------

    def transport_for(self, socket: object) -> Transport:
        """The transport of ``socket``: itself, or its library's adapter (imported on use)."""
        if isinstance(socket, Transport):
            return socket
        factory = adapter_for(socket)
        if factory is None:
            raise WrongType(no_adapter(socket))
        return factory(socket)

    def _pings_to(self, transport: Transport) -> None:
        if self._must_ping and not transport.can_ping:
            raise InvalidArgument(transport.no_ping_reason)

    def register(
        self,
        socket: object,
        identifier: str,
        *,
        transport: Transport | None = None,
        initial: ConnectionState = C,
        retry_policy: RetryPolicy | None = None,
        meta: object = None,
    ) -> Connection:
        """A new connection for ``socket``: CONNECTED (or RECONNECTING while dialling).

        ``meta``: the identity's metadata from now on (``check_meta``); ``None`` keeps it.
        """
        self.context.check()
        check_name("identifier", identifier)
        checked = None if meta is None else check_meta(meta)
        registry = self.registry
        if registry.get(socket) is not None:
            raise AlreadyRegistered(f"{socket!r} is already registered")
        if transport is None:
            transport = self.transport_for(socket)
        if self._must_ping and not transport.can_ping:  # (``_pings_to``, a call saved)
            raise InvalidArgument(transport.no_ping_reason)
        conn = Connection(self, socket, transport, identifier, self.context.clock.now())
        conn.retry_policy = retry_policy
        transport.attach(conn)
        inbound = self.inbound
        if inbound.max_size is not None:
            inbound.limit(conn)
        first = identifier not in registry.by_identifier
        presence = self.presence
        changed = presence.registered(identifier, checked)
        membership = self.membership
        if membership is not _ALONE and (first or changed):
            registry.add(conn)
            # Groups belong to the identifier fleet-wide: take those it has elsewhere.
            for group in membership.online(identifier, presence.metas.get(identifier)):
                registry.join(identifier, group)
        else:
            registry.add(conn)
        if initial is C:
            self.resumption.registered(conn)
        reason = "registered" if initial is C else "dialling"
        self.apply((self.machine.start(conn, initial, reason),))
        return conn

    def forget(self, conn: Connection, reason: str) -> None:
        """Unregister ``conn``: DISCONNECTED (if it is not already), out of every index."""
        if not conn.registered:
            return
        outbox = self.outbox
        # Before the change to DISCONNECTED, which would count these drops as "disconnected".
        outbox.discard(conn, "unregistered")
        hold = conn._hold
        if hold is not None:
            hold.held = False
        conn.registered = False  # first: the DISCONNECTED effect must not forget it again
        if conn.state is not D:
            self.apply(self.machine.request(conn, D, reason))  # (which stops its writer)
        else:
            outbox.stop_writer(conn)
        if conn.dialled:
            # The manager dialled it, so nobody else would close it (nor end its reader).
            self.context.spawn(
                outbox.close, conn.transport, 1000, "unregistered", name="wsfleet close"
            )
        registry = self.registry
        registry.remove(conn)
        self.timers.forget(conn)
        last = conn.identifier not in registry.by_identifier
        if last:
            self.presence.gone(conn.identifier)
            membership = self.membership
            if membership is not _ALONE:
                membership.offline(conn.identifier)
        inbound = self.inbound
        if inbound.policy is not None:
            inbound.forget(conn, last)
        self.resumption.forget(conn)

    def close_identifier(self, identifier: str, code: int, reason: str) -> int:
        """Close and forget every socket of ``identifier`` here; how many there were."""
        conns = list(self.registry.connections_of(identifier))
        for conn in conns:
            self.context.spawn(self.outbox.close, conn.transport, code, reason, name="wsfleet kick")
            self.forget(conn, f"disconnected by the server ({code})")
        return len(conns)

    def replace_transport(self, conn: Connection, transport: Transport) -> None:
        """Swap in a new socket; the old one is detached (its late reports are ignored)."""
        old = conn.transport
        if old is transport:
            return
        old.connection = None
        conn.transport = transport
        transport.attach(conn)
        self.inbound.limit(conn)
        self.context.spawn(self.outbox.close, old, 1000, "replaced", name="wsfleet close")

    # -- state changes: the machine decides, ``apply`` acts ------------------------------------

    def request(
        self, conn: Connection, target: ConnectionState, reason: str
    ) -> tuple[StateChange, ...]:
        """Move ``conn`` to ``target`` (or ``InvalidTransition``, nothing changed) and apply."""
        changes = self.machine.request(conn, target, reason)
        self.apply(changes)
        return changes

    def apply(self, changes: Sequence[StateChange]) -> None:
        """Carry out what the changes mean, in the order the module docstring gives."""
        registry = self.registry
        outbox = self.outbox
        callbacks = self.callbacks
        for change in changes:
            conn = change.connection
            assert isinstance(conn, Connection)
            new = change.new
            old = change.old
            registry.moved(conn, old, new)
            # ``in HELD`` spelled out: an Enum's hash is a Python call, twice per change.
            held = new is E or new is R
            if (old is E or old is R) is not held:
                outbox.park(conn, held=held)
            if new is C:
                self.timers.arm(conn, reconnected=old is R)
                outbox.schedule(conn)
            elif new is D:
                outbox.discard(conn, "disconnected")
            if new is E or new is D:
                outbox.stop_writer(conn)
            if change.retry_in is not None:
                self.timers.retry_after(conn, change.retry_in)
            if callbacks:
                callbacks.publish(change, conn.socket)
            if new is D and conn.registered:
                # Nothing holds a DISCONNECTED connection (no retry is coming, no resume
                # window is open): it is no longer active, so it leaves the registry at once.
                self.forget(conn, change.reason or "disconnected")

    def timestamp(self, conn: Connection) -> datetime:
        return self.machine.timestamp(conn)

    # -- delivery ----------------------------------------------------------------------------

    def check_message(self, message: object) -> int:
        """The message's size on the wire; refused (changing nothing) if it cannot go out."""
        self.context.check()
        size = message_size(message)
        limit = self.overflow.max_message_size
        if size > limit:
            raise MessageTooLarge(size, limit)
        return size

    def behind(self) -> bool:
        """Whether the fleet's queues say the server is behind (``BackpressurePolicy``)."""
        policy = self.backpressure
        outbox = self.outbox
        # Only what writers can drain counts: queues kept for a retry or a resume wait for
        # their client, not for the server, and a producer waiting on them would wait for
        # nothing (a few dozen held sessions would hold up every fan-out).
        queued = outbox.queued_messages - outbox.held_messages
        if policy is None or queued <= 0:
            return False
        overflow = self.overflow
        by_state = self.registry.by_state
        return policy.behind(
            queued_messages=queued,
            queued_bytes=outbox.queued_bytes - outbox.held_bytes,
            connections=len(by_state[C]) + len(by_state[ConnectionState.IDLE]),
            queue_messages=overflow.max_messages,
            queue_bytes=overflow.max_bytes,
            evicting=overflow.action is OverflowAction.DISCONNECT,
        )

    def history(
        self, default: HistoryPolicy | None, *, frame: Frame | None, store: HistoryStore | None
    ) -> History:
        """The groups' history, delivering through this fleet (``History``)."""
        return History(
            self.registry,
            self.deliver,
            self.check_message,
            self.context.now,
            default=default,
            frame=frame,
            store=store,
        )

    async def room(self) -> None:
        """Wait, bounded, while the fleet is behind and its writers are making progress.

        Writers that make no progress for ``stall_after`` are not slow but stalled (their
        peers stopped reading): waiting for them would block the producer on them, so the
        wait ends, and their queues' own bound evicts them. Until the writers progress
        again, a later call does not wait for them either.
        """
        policy = self.backpressure
        if policy is None or not self.behind():
            return
        outbox = self.outbox
        progress = outbox.progress
        if progress == self._stalled_at:
            return
        started = last_change = anyio.current_time()
        self.producer_waits += 1
        try:
            while self.behind():
                await anyio.sleep(0.002)
                now = anyio.current_time()
                if outbox.progress != progress:
                    progress = outbox.progress
                    last_change = now
                elif now - last_change >= policy.stall_after:
                    self._stalled_at = progress
                    return
                if now - started >= policy.max_wait:
                    return
        finally:
            self.producer_wait_seconds += anyio.current_time() - started

    def deliver(self, targets: Iterable[Connection], message: Message, size: int) -> int:
        """Queue ``message`` for ``targets``; then evict the ones whose queue overflowed."""
        outbox = self.outbox
        count = outbox.fan_out(targets, message, size)
        observer = self.observer
        if observer is not None:
            observer.fanned_out(size, count)
            outbox.note_fanout()
        if outbox.has_evictions:
            for conn in outbox.take_evictions():
                if conn.registered and conn.writable:  # the message that did not fit too
                    self.evict(conn, POLICY_VIOLATION, "slow consumer", refused=1)
                else:
                    outbox.count_drop("slow consumer")
        return count

    def send_to(self, conn: Connection, message: Message) -> int:
        """``Connection.send``: ``message`` for this one connection."""
        size = self.check_message(message)
        if not conn.registered:
            return 0
        return self.deliver((conn,), message, size)

    def evict(self, conn: Connection, code: int, reason: str, *, refused: int = 0) -> None:
        """Cut a connection off: ERROR (then whatever its retry policy says) and close it.

        What it had queued is dropped, with ``refused`` messages that did not get in.
        """
        outbox = self.outbox
        conn.cut_off = (code, reason)
        outbox.stop_writer(conn)
        outbox.discard(conn, reason, refused=refused)
        if conn.state in (C, I, R):
            self.request(conn, E, reason)
        self.context.spawn(outbox.close, conn.transport, code, reason, name="wsfleet close")

    # -- what the sockets report (``Connection`` calls these; adapters call it) ----------------

    def touched(self, conn: Connection, pong: bool) -> None:
        if not conn.registered:
            return
        self.timers.touched(conn, pong)
        if not pong and conn.state is I:
            self.request(conn, C, "activity")

    def closed(self, conn: Connection, code: int | None, reason: str) -> None:
        if not conn.registered or not conn.writable or conn.leaving:
            return
        if is_clean(code):
            self.request(conn, D, f"closed ({code}{': ' + reason if reason else ''})")
        else:
            self.request(conn, E, f"abnormal close ({code or 1006})")

    def outbound_closed(self, conn: Connection, code: int, reason: str) -> None:
        """A server closed a client connection: come back later, unless it said not to."""
        if self.context.closing or not conn.registered or not conn.writable or conn.leaving:
            return  # closing, the manager closed it itself: no error, no retry
        text = f"closed by the server ({code}{': ' + reason if reason else ''})"
        self.request(conn, D if is_final(code) else E, text)

    def failed(self, conn: Connection, error: BaseException | str) -> None:
        if not conn.registered or conn.state not in (C, I, R) or conn.leaving:
            return
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.request(conn, E, f"I/O failure: {text}")

    def admit(self, conn: Connection, message: Message) -> tuple[bool, float]:
        """Whether a message ``conn`` received goes on to the application, and how long its
        sender must not be read first (rate limits)."""
        return self.inbound.admit(conn, message)

    def lost(self, conn: Connection, admitted: bool) -> None:
        """A received message its session will not hand on (see ``SessionHost.lost``)."""
        self.inbound.lost(admitted)

    def rate_limited(self, conn: Connection) -> None:
        if conn.registered and conn.writable:
            self.evict(conn, POLICY_VIOLATION, RATE_LIMITED)

    def too_big(self, conn: Connection) -> None:
        if conn.registered and conn.writable:
            self.evict(conn, MESSAGE_TOO_BIG, "message too big")

    # -- what the outbox reports -------------------------------------------------------------

    def ping_written(self, conn: Connection) -> None:
        self.timers.ping_written(conn)

    def ping_unwritten(self, conn: Connection) -> None:
        self.timers.ping_unwritten(conn)

    def send_failed(self, conn: Connection, error: Exception) -> None:
        self.failed(conn, error)

    # -- what the timers report ------------------------------------------------------------------

    def ping_due(self, conn: Connection) -> None:
        self.outbox.queue_ping(conn)

    def heartbeat_failed(self, conn: Connection, reason: str) -> None:
        self.evict(conn, INTERNAL_ERROR, reason)

    def went_idle(self, conn: Connection, reason: str) -> None:
        self.request(conn, I, reason)

    def retry_due(self, conn: Connection) -> None:
        changes = self.machine.retry_due(conn)
        self.apply(changes)
        if not changes or changes[-1].new is not R:
            return
        reconnector = conn._beat.reconnector
        if reconnector is None:
            self.request(conn, E, "attempt failed: nothing can reconnect this socket")
        else:
            self.context.spawn(self.attempt, conn, reconnector, name="wsfleet retry")

    async def attempt(self, conn: Connection, reconnector: Reconnector) -> None:
        """Run one attempt; its transport replaces the old one, its failure means ERROR."""
        serial = conn._beat.retry_serial
        try:
            transport = await reconnector(conn)
        except ResumeExpired as exc:
            if conn.registered and conn.state is R:
                self.request(conn, D, str(exc) or "resume window expired")
            return
        except FinalRefusal as exc:  # e.g. HTTP 403 to the handshake: retrying will not help
            if conn.registered and conn.state is R and conn._beat.retry_serial == serial:
                self.request(conn, D, f"refused: {exc}")
            return
        except Exception as exc:
            if conn.registered and conn.state is R and conn._beat.retry_serial == serial:
                self.request(conn, E, f"attempt failed: {type(exc).__name__}: {exc}")
            return
        # No await between the reconnector's return and the decision below: an outbound
        # holder relies on it (it starts reading only once the transport is installed).
        if not conn.registered or conn.state is not R:
            await self.outbox.close(transport, 1000, "no longer wanted")
            return
        self.replace_transport(conn, transport)
        self.request(conn, C, "reconnected")

    # -- resumption: it decides, this acts ------------------------------------------------------

    def take_over(self, socket: object, identifier: str, token: str) -> Connection | None:
        """Give a held session to a new socket, if ``token`` names one of ``identifier``'s."""
        conn = self.resumption.find(identifier, token)
        if conn is None:
            return None
        self.context.check()
        if self.registry.get(socket) is not None:
            raise AlreadyRegistered(f"{socket!r} is already registered")
        transport = self.transport_for(socket)
        self._pings_to(transport)
        if conn.state is E:
            try:
                self.request(conn, R, "resuming")
            except InvalidTransition:  # no retry left: the session is over, start afresh
                return None
        self.registry.rekey(conn, socket)
        conn.socket = socket
        self.replace_transport(conn, transport)
        if conn._hold is not None:
            conn._hold.held = False
        conn._beat.reconnector = None
        self.resumption.resumed(conn)
        self.request(conn, C, "resumed")
        return conn

    def hold(self, conn: Connection) -> bool:
        """Keep a session whose handler ended abnormally, for its client to resume.

        A server cannot redial, so its RECONNECTING means "holding": the session moves there
        at once (the retry delay is the client's business) and waits for a resume until the
        window closes.
        """
        hold = conn._hold
        if hold is None or hold.token is None or conn.state not in HELD:
            return False
        hold.held = True
        wait = self.resumption.wait_for_resume
        conn._beat.reconnector = wait
        if conn.state is E:
            try:
                self.request(conn, R, "holding for the client to resume")
            except InvalidTransition:  # no attempt left: nothing to hold
                hold.held = False
                return False
            self.context.spawn(self.attempt, conn, wait, name="wsfleet hold")
        return True
