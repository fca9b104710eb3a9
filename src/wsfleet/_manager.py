"""The ConnectionManager: the public API over one node's runtime and, if any, its backplane.

The manager is a facade. It checks what users pass (names, types, messages), then delegates:
connections, their states and their delivery to the runtime (``_runtime.fleet.Fleet`` and
its parts), what other nodes must hear to the backplane. It owns the task group of
``async with``: leaving the block flushes what is queued, closes every socket with 1001 and
waits for the tasks, each step bounded in time.

Calls go one way: the manager calls the runtime and the backplane; the runtime's parts
never call the manager, and the backplane reaches this node only through the small
interface the manager gives it (``_Node``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Self

import anyio
import anyio.abc
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled

from ._node import BackplaneNode, attach
from ._runtime.auth import Authenticate, Authenticator, session_for
from ._runtime.callbacks import CallbackHandle, StateCallback
from ._runtime.connection import Connection, Reconnector
from ._runtime.fleet import Fleet
from ._runtime.history import Frame, HistoryStore
from ._runtime.joins import JoinRule, JoinRules
from ._runtime.observer import FleetObserver, ObserverHandle
from ._runtime.outbound import MessageHandler, dial
from ._runtime.registry import Registry, check_name
from ._runtime.report import snapshot
from ._runtime.routing import excluded, excluded_names, targets
from ._runtime.session import Session
from ._runtime.settings import check_close, check_instance, check_seconds, check_size
from ._runtime.stats import Delivery, FleetStats
from .backplane import Backplane, Node
from .errors import ManagerClosed, UnknownSocket, WrongType
from .fsm.states import ConnectionState
from .policies.backpressure import BackpressurePolicy
from .policies.heartbeat import HeartbeatPolicy
from .policies.history import HistoryPolicy, Position
from .policies.overflow import OverflowPolicy
from .policies.ratelimit import RateLimitPolicy
from .policies.retry import RetryPolicy
from .presence import Meta, PresenceEvent
from .transport import Message

__all__ = ["ConnectionManager"]

logger = logging.getLogger("wsfleet")

#: Fan-out waits for the writers when the whole fleet is behind (see ``BackpressurePolicy``).
_DEFAULT_BACKPRESSURE: Final = BackpressurePolicy()

#: Pings every 20 s, a peer silent 20 s after one is dead, IDLE after 60 s without a message:
#: what websockets does by default. Sockets that cannot be pinged (ASGI) are left to their
#: server's keepalive under this default; an explicit pinging policy refuses them instead.
_DEFAULT_HEARTBEAT: Final = HeartbeatPolicy()


class ConnectionManager:
    """Holds a fleet of WebSocket connections and delivers messages to them.

    Use it as an async context manager; it runs its tasks in its own task group::

        async with ConnectionManager(heartbeat=HeartbeatPolicy()) as manager:
            conn = manager.register(socket, "alice")
            manager.add_to_group("alice", "room:1")
            await manager.send_to_group("room:1", "hello")

    It belongs to the loop (and thread) that entered it: calls that change the fleet raise
    ``WrongThread`` from another thread (go through ``anyio.from_thread``) and
    ``ManagerClosed`` once the block has ended. ``count()`` counts the active connections
    and the held ones (kept for a retry or a resume; ``stats().held``); a connection that
    reaches DISCONNECTED leaves the registry at once.
    """

    def __init__(
        self,
        *,
        retry_policy: RetryPolicy | None = None,
        heartbeat: HeartbeatPolicy | None = _DEFAULT_HEARTBEAT,
        overflow: OverflowPolicy | None = None,
        backplane: Backplane | None = None,
        resume_window: float | None = None,
        callback_timeout: float = 5.0,
        shutdown_timeout: float = 5.0,
        close_timeout: float = 2.0,
        backpressure: BackpressurePolicy | None = _DEFAULT_BACKPRESSURE,
        rate_limit: RateLimitPolicy | None = None,
        can_join: JoinRule | None = None,
        authenticate: Authenticate | None = None,
        max_message_size: int | None = None,
        history: HistoryPolicy | None = None,
        history_store: HistoryStore | None = None,
        frame: Frame | None = None,
    ) -> None:
        """Settings, each checked here (a bad one raises and nothing is started).

        :param retry_policy: every connection's default retry policy (``set_retry_policy``
            overrides it per connection). With one, a connection that fails is held in
            ERROR/RECONNECTING for a retry or a resume; ``None``: it ends DISCONNECTED.
        :param heartbeat: pings, pong timeouts and idleness; ``HeartbeatPolicy()`` (a ping
            every 20 s, dead 20 s later, IDLE after 60 s) unless given, ``None`` turns it off.
        :param overflow: each connection's queue bound and what a full queue does.
        :param backplane: the other nodes of the fleet (``RedisBackplane``); alone if ``None``.
        :param resume_window: how long a session that ended abnormally is held for its client
            to resume (seconds); by default the retry policy's whole schedule.
        :param callback_timeout: how long one ``on_state_change`` callback may take.
        :param shutdown_timeout: how long leaving the block may flush, and wait for callbacks.
        :param close_timeout: how long a close (handshake included) may take before the
            connection is cut.
        :param backpressure: when fan-out calls wait because the whole fleet is behind;
            ``None`` never waits.
        :param rate_limit: how much one client may send (``RateLimitPolicy``): over it, the
            sender is not read until it is back within its limit, and the message waits
            (the default), is dropped and counted, or closes the sender with 1008;
            ``None`` (the default) limits nothing.
        :param can_join: ``(identifier, group) -> bool`` (plain or async), asked before an
            identifier joins a group no ``join_rule`` pattern names; ``None`` allows all.
        :param authenticate: who a socket is, ``(handshake) -> str | None``: ``authenticate()``.
        :param max_message_size: the largest message a client may send, in bytes, on every
            adapter (over it: closed with 1009); ``None`` leaves each library's own limit.
        :param history: every group's ``HistoryPolicy`` unless ``keep_history`` sets one;
            ``None`` (the default): only the groups ``keep_history`` names keep history.
        :param history_store: where groups keep it: this node's memory unless given (a
            ``RedisHistory`` shares it across the fleet). ``frame(message, position)``:
            what a socket is sent for a kept message (``wsfleet.framing.json_frame``).
        """
        for name, policy, kind in (
            ("retry_policy", retry_policy, RetryPolicy),
            ("heartbeat", heartbeat, HeartbeatPolicy),
            ("overflow", overflow, OverflowPolicy),
            ("backpressure", backpressure, BackpressurePolicy),
            ("rate_limit", rate_limit, RateLimitPolicy),
            ("backplane", backplane, Backplane),
            ("history", history, HistoryPolicy),
        ):
            check_instance(name, policy, kind)
        self._joins, self._auth = JoinRules(can_join), Authenticator(authenticate)
        check_size("max_message_size", max_message_size)
        for name, seconds in (
            ("callback_timeout", callback_timeout),
            ("shutdown_timeout", shutdown_timeout),
            ("close_timeout", close_timeout),
            ("resume_window", 1.0 if resume_window is None else resume_window),
        ):
            check_seconds(name, seconds)
        self.heartbeat = heartbeat
        self.overflow = overflow if overflow is not None else OverflowPolicy()
        self.resume_window = None if resume_window is None else float(resume_window)
        self.shutdown_timeout = float(shutdown_timeout)
        self.close_timeout = float(close_timeout)
        self._fleet = Fleet(
            retry_policy=retry_policy,
            heartbeat=heartbeat,
            overflow=self.overflow,
            resume_window=self.resume_window,
            callback_timeout=float(callback_timeout),
            close_timeout=self.close_timeout,
            backpressure=backpressure,
            pings_optional=heartbeat is _DEFAULT_HEARTBEAT,
            rate_limit=rate_limit,
            max_message_size=max_message_size,
        )
        self.rate_limit = rate_limit
        self.backpressure = backpressure
        self._registry: Registry = self._fleet.registry
        self._history = self._fleet.history(history, frame=frame, store=history_store)
        self._backplane = backplane
        if backplane is not None:
            attach(self._fleet, backplane)
        self._tg: anyio.abc.TaskGroup | None = None
        self._entered = False
        self._batching = 0

    # -- lifetime --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._entered:
            raise ManagerClosed("a ConnectionManager can be entered once")
        self._entered = True
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._fleet.bind(tg)
        if self._backplane is not None:
            node: Node = BackplaneNode(self._fleet)
            await tg.start(self._backplane.run, node, name="wsfleet backplane")
        if self._history.store is not None:
            await tg.start(self._history.listen, name="wsfleet history")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg = self._tg
        assert tg is not None
        try:
            with anyio.CancelScope(shield=True):
                await self._shutdown()
        finally:
            self._fleet.context.unbind()
            tg.cancel_scope.cancel()
            if isinstance(exc, Exception):
                # The body's own error goes on as it is, not wrapped in the task group's
                # ExceptionGroup; only errors of the manager's tasks are grouped.
                await tg.__aexit__(None, None, None)
            else:
                await tg.__aexit__(exc_type, exc, tb)
            self._tg = None
        return None

    async def _shutdown(self) -> None:
        """Flush what is queued, close every socket with 1001, let the callbacks run.

        Flushing and the callbacks are each bounded by ``shutdown_timeout``; closing a socket
        by ``close_timeout``. A socket whose peer stopped reading is closed all the same.
        """
        fleet = self._fleet
        fleet.context.closing = True
        with anyio.move_on_after(self.shutdown_timeout):
            await fleet.flush()
        await fleet.close_all()
        if self._backplane is not None:
            await self._backplane.close()
        with anyio.move_on_after(self.shutdown_timeout):
            await fleet.wait_idle()

    # -- registry ------------------------------------------------------------------------

    def register(self, socket: object, identifier: str, *, meta: Meta = None) -> Connection:
        """Add a socket under ``identifier`` (one identifier may hold several sockets).

        ``socket`` is a ``Transport`` or a socket of a library wsfleet has an adapter for
        (found from the socket's class and imported on first use). The connection starts
        CONNECTED. ``meta``: the identity's presence metadata from now on (``check_meta``).
        """
        return self._fleet.register(socket, identifier, meta=meta)

    def unregister(self, socket: object) -> bool:
        """Move the socket to DISCONNECTED and forget it; ``False`` if it is not registered.

        Does not close the socket (``close`` does both). Messages still queued for it are
        dropped and counted.
        """
        self._fleet.context.check(cleanup=True)
        conn = self._registry.get(socket)
        if conn is None:
            return False
        self._fleet.forget(conn, "unregistered")
        return True

    async def close(self, socket: object, code: int = 1000, reason: str = "") -> None:
        """Close the socket with ``code`` and ``reason``, then unregister it.

        ``code`` is one a close frame may carry (1000-1003, 1007-1014, 3000-4999) and
        ``reason`` at most 123 bytes of UTF-8; anything else is refused, changing nothing.
        """
        fleet = self._fleet
        fleet.context.check(cleanup=True)
        check_close(code, reason)
        conn = self._connection(socket)
        conn.leaving = True  # its own close coming back is not the peer's doing
        await fleet.outbox.close(conn.transport, code, reason)
        fleet.forget(conn, f"closed by the application ({code})")

    def clear(self) -> None:
        """Unregister every connection (callbacks fire); groups empty with them."""
        fleet = self._fleet
        fleet.context.check(cleanup=True)
        for conn in list(self._registry):
            fleet.forget(conn, "cleared")

    def count(self) -> int:
        """Registered sockets: the active ones and the held ones (``stats().held``)."""
        return len(self._registry)

    def __len__(self) -> int:
        return len(self._registry)

    def _connection(self, socket: object) -> Connection:
        conn = self._registry.get(socket)
        if conn is None:
            raise UnknownSocket(f"{socket!r} is not registered with this manager")
        return conn

    def connection(self, socket: object) -> Connection:
        """The ``Connection`` of a registered socket; ``UnknownSocket`` otherwise."""
        return self._connection(socket)

    def identifier_of(self, socket: object) -> str | None:
        conn = self._registry.get(socket)
        return None if conn is None else conn.identifier

    def sockets_of(self, identifier: str) -> list[object]:
        """The identifier's sockets, in registration order; empty if it has none."""
        check_name("identifier", identifier)
        return [conn.socket for conn in self._registry.connections_of(identifier)]

    def identifiers(self) -> set[str]:
        return set(self._registry.by_identifier)

    # -- groups --------------------------------------------------------------------------

    def add_to_group(self, identifier: str, group: str) -> None:
        """Put every socket of ``identifier``, present and future, in ``group``; idempotent.

        With a backplane the membership is fleet-wide: other nodes holding sockets of
        ``identifier`` put them in the group too. ``identifier`` must have a socket here.
        A new membership is first put to the group's join rule (``join_rule``,
        ``can_join``): ``JoinRefused`` if it says no; an async rule needs ``join``.
        """
        self._fleet.context.check()
        check_name("identifier", identifier)
        check_name("group", group)
        if group not in self._registry.memberships.get(identifier, ()):
            self._joins.check_now(identifier, group)
            self._join(identifier, group)

    async def join(self, identifier: str, group: str) -> None:
        """``add_to_group``, asking the group's join rule even if it is async."""
        self._fleet.context.check()
        check_name("identifier", identifier)
        check_name("group", group)
        if group not in self._registry.memberships.get(identifier, ()):
            await self._joins.check(identifier, group)
            self._fleet.context.check()  # the rule took time: the manager may have closed
            self._join(identifier, group)

    def _join(self, identifier: str, group: str) -> None:
        new = group not in self._registry.memberships.get(identifier, ())
        self._registry.join(identifier, group)
        if new and self._backplane is not None:
            self._backplane.membership("join", identifier, group)

    def join_rule(self, pattern: str, rule: JoinRule | None = None) -> Any:
        """Ask ``rule(identifier, group) -> bool`` before anyone joins a group ``pattern``
        names: one name, or an ``fnmatch`` pattern (``"room:*"``). Exact names come first,
        then patterns in the order given, then ``can_join``. Also a decorator:
        ``@manager.join_rule("admin:*")`` above the rule.
        """
        return self._joins.given(pattern, rule)

    def remove_from_group(self, identifier: str, group: str) -> None:
        """Take ``identifier`` out of ``group``; idempotent, even once it has no socket left."""
        self._fleet.context.check(cleanup=True)
        check_name("identifier", identifier)
        check_name("group", group)
        was = group in self._registry.memberships.get(identifier, ())
        self._registry.leave(identifier, group)
        self._history.left(self._registry.connections_of(identifier), group)
        if was and self._backplane is not None:
            self._backplane.membership("leave", identifier, group)

    def get_group_members(self, group: str) -> set[str]:
        """Identifiers in ``group``, on every node (a copy); empty for an unknown group."""
        return self._fleet.presence.members(check_name("group", group))

    def groups_of(self, identifier: str) -> set[str]:
        return self._fleet.presence.groups_of(check_name("identifier", identifier))

    def groups(self) -> set[str]:
        return set(self._registry.groups)

    def keep_history(self, group: str, policy: HistoryPolicy | None) -> None:
        """Keep ``group``'s messages by ``policy`` (``None``: keep none, whatever the
        manager's default), so clients can ``recover`` what they missed."""
        check_name("group", group)
        check_instance("policy", policy, HistoryPolicy)
        self._history.keep(group, policy)

    async def recover(self, socket: object, group: str, *, since: Position | str) -> int:
        """Send ``socket`` every message of ``group`` after ``since`` (a ``Position`` or its
        ``str()``), in order, then the live ones: no gap, no duplicate. Returns how many it
        replayed; ``RecoveryImpossible`` (nothing replayed) if the history cannot: another
        epoch, ``since`` fell out, newer messages already went to the socket live, or
        ``since`` is not a position (a client's text is the client's mistake)."""
        self._fleet.context.check()
        check_name("group", group)
        return await self._history.recover(self._connection(socket), group, since)

    # -- the fleet across nodes (a backplane) ----------------------------------------------------

    @property
    def node_id(self) -> str | None:
        """This manager's node in its fleet; ``None`` without a backplane."""
        return None if self._backplane is None else self._backplane.node_id

    def nodes_of(self, identifier: str) -> set[str]:
        """The nodes where ``identifier`` has sockets (this one's id, or "local", included)."""
        return self._fleet.presence.nodes_of(check_name("identifier", identifier))

    def online(self, identifier: str) -> bool:
        """Whether ``identifier`` has a socket (a held session counts) on any node."""
        return self._fleet.presence.online(check_name("identifier", identifier))

    async def presence(self, group: str) -> dict[str, dict[str, Any]]:
        """``{identifier: meta}`` for ``group``'s members on every node (copies)."""
        check_name("group", group)
        await checkpoint()
        return self._fleet.presence.of_group(group)

    def on_presence(self, callback: Callable[[PresenceEvent], Any]) -> CallbackHandle:
        """Call ``callback(event)`` (sync or async, run as ``on_state_change``'s) once per
        ``PresenceEvent`` of the fleet, whichever node it happened on; see the presence
        how-to. Returns a handle whose ``remove()`` unsubscribes."""
        if self._entered:
            self._fleet.context.check(cleanup=True)
        return self._fleet.presence.subscribe(callback)

    def online_count(self) -> int:
        """Identifiers with at least one socket on any node."""
        return self._fleet.presence.count()

    async def disconnect_identifier(
        self, identifier: str, code: int = 1000, reason: str = ""
    ) -> int:
        """Close every socket of ``identifier`` on every node; returns how many were here.

        ``code`` and ``reason`` as for ``close``.
        """
        check_name("identifier", identifier)
        self._fleet.context.check()
        check_close(code, reason)
        closed = self._fleet.close_identifier(identifier, code, reason)
        if self._backplane is not None:
            self._backplane.kick(identifier, code, reason)
        await checkpoint()
        return closed

    def _publish(
        self, to: str, target: str | list[str] | None, message: Message, exclude: object
    ) -> bool:
        if self._backplane is None:
            return False
        names = [] if exclude is None else excluded_names(exclude)
        return self._backplane.send(to, target, message, names)

    # -- states ----------------------------------------------------------------------------

    def get_connection_state(self, socket: object) -> ConnectionState | None:
        conn = self._registry.get(socket)
        return None if conn is None else conn.state

    def get_state_timestamp(self, socket: object) -> datetime | None:
        """When the socket entered its current state (aware UTC); ``None`` if unknown."""
        conn = self._registry.get(socket)
        return None if conn is None else self._fleet.timestamp(conn)

    def connections_in_state(self, state: ConnectionState) -> list[object]:
        """Sockets currently in ``state``, from an index (no scan of the fleet)."""
        if not isinstance(state, ConnectionState):
            raise WrongType(f"state must be a ConnectionState, got {state!r}")
        return [conn.socket for conn in self._registry.by_state[state].values()]

    def set_connection_state(
        self, socket: object, state: ConnectionState, reason: str | None = None
    ) -> None:
        """Apply the transition now, or raise ``InvalidTransition`` changing nothing.

        Callbacks run afterwards, each in its own task of the manager's. ERROR with no retry
        policy (the connection's, or the manager's default) goes on to DISCONNECTED in the
        same call; DISCONNECTED is final, and the connection leaves the registry at once
        (callbacks still see both changes).
        """
        self._fleet.context.check(cleanup=True)
        if not isinstance(state, ConnectionState):
            raise WrongType(f"state must be a ConnectionState, got {state!r}")
        conn = self._connection(socket)
        self._fleet.request(conn, state, reason if reason is not None else "set by application")

    def set_retry_policy(self, socket: object, policy: RetryPolicy | None) -> None:
        """This connection's own policy; ``None`` returns it to the manager's default."""
        self._fleet.context.check()
        if policy is not None and not isinstance(policy, RetryPolicy):
            raise WrongType(f"policy must be a RetryPolicy or None, got {policy!r}")
        self._connection(socket).retry_policy = policy

    def set_reconnector(self, socket: object, reconnector: Reconnector | None) -> None:
        """What a retry attempt does for this connection (adapters set it).

        ``reconnector(connection)`` returns a new ``Transport`` or raises to fail the attempt.
        """
        self._fleet.context.check()
        if reconnector is not None and not callable(reconnector):
            raise WrongType(f"reconnector must be callable or None, got {reconnector!r}")
        self._connection(socket)._beat.reconnector = reconnector

    def on_state_change(self, callback: StateCallback) -> CallbackHandle:
        """Call ``callback(socket, old, new)`` (or ``callback(change)``) after every change.

        Sync or async; usable as a decorator. ``old`` is ``None`` for a new connection.
        Returns a handle whose ``remove()`` unsubscribes. Callbacks may be added before the
        manager is entered.
        """
        if self._entered:
            self._fleet.context.check(cleanup=True)  # the loop's thread; not once it has ended
        return self._fleet.callbacks.add(callback)

    async def authenticate(self, socket: object) -> str:
        """Who the ``authenticate`` hook says ``socket`` (or its request) is, asked once per
        object (``session`` uses it); ``Unauthenticated`` if it refuses (``wsfleet.handshake``)."""
        return await self._auth.identify(socket)

    def add_observer(self, observer: FleetObserver) -> ObserverHandle:
        """Report every fan-out here to ``observer``; returns a handle whose ``remove()``
        detaches it.

        ``observer.fanned_out(size, recipients)`` runs once per fan-out call (another node's
        included), ``observer.flushed(seconds)`` once per flusher round that wrote one: the
        seconds from that round's first fan-out call to its batches handed to the
        transports. Both run on the loop, inside the call: they must be quick and must not
        raise. ``wsfleet.metrics.FleetCollector`` is one; with none, a fan-out pays one
        attribute check for the feature.
        """
        if self._entered:
            self._fleet.context.check(cleanup=True)
        return self._fleet.add_observer(observer)

    def session(
        self,
        socket: object,
        identifier: str | None = None,
        *,
        resume: str | None = None,
        meta: Meta = None,
    ) -> AbstractAsyncContextManager[Session]:
        """Register ``socket`` for the life of a handler; iterate the session to receive.

        ``async with manager.session(ws, "alice") as session: async for msg in session: ...``
        A close from the peer ends the iteration (1000/1001/1005: DISCONNECTED, other codes:
        ERROR); leaving the block closes the socket if still open and unregisters it, or,
        after an abnormal end with a retry policy, holds the session for the client to
        resume. ``resume`` is the ``session.resume_token`` the client got last time: when it
        names a held session of the same identifier, the new socket takes it over (its
        groups kept, its buffered messages delivered first); any other value starts afresh.
        A bad identifier (it comes from the client) closes the socket with 1008 instead.
        With an ``authenticate`` hook, the hook names it (``identifier`` must agree): 4401.
        ``meta``: presence metadata, as for ``register`` (a resumed session keeps its own).
        """
        return session_for(self._fleet, self._auth, socket, identifier, resume, meta)

    def touch(self, socket: object, *, pong: bool = False) -> None:
        """Report inbound activity on ``socket`` (adapters call it for each message/pong)."""
        self._fleet.context.check(cleanup=True)
        self._fleet.touched(self._connection(socket), pong)

    def resume_window_of(self, conn: Connection) -> float:
        """How long a held session waits: the manager's window, or its policy's whole schedule."""
        return self._fleet.resumption.window_of(conn)

    # -- outbound connections ------------------------------------------------------------------

    async def connect(
        self,
        url: str,
        identifier: str,
        *,
        retry_policy: RetryPolicy | None = None,
        backend: str = "websockets",
        on_message: MessageHandler | None = None,
        **options: Any,
    ) -> Connection:
        """Open an outbound connection to ``url`` and keep it up by the retry policy.

        The connection starts RECONNECTING while its first dial runs; it is CONNECTED when
        the handshake succeeds. A failed dial or a lost connection goes to ERROR, then after
        the policy's delay to RECONNECTING for a new dial, until the attempts or the time
        budget run out (DISCONNECTED). Close codes 1008 and 4000-4999, or an HTTP 4xx answer
        to the handshake, end it at once. Messages sent while it is down wait in its queue.
        ``on_message(connection, message)`` (sync or async) receives what the server sends.
        ``backend`` is ``"websockets"`` (asyncio or trio) or ``"trio-websocket"`` (trio);
        ``options`` go to that library's client.
        """
        self._fleet.context.check()
        return await dial(self._fleet, url, identifier, retry_policy, backend, on_message, options)

    # -- fan-out -----------------------------------------------------------------------------

    async def broadcast(self, message: Message, *, exclude: object = None) -> int:
        """Queue ``message`` for every connection except ``exclude`` (sockets or identifiers).

        Returns how many connections it was for (see ``Delivery``). Inside
        ``async with manager.batch():`` a burst is queued whole before anything is written.
        When the whole fleet is behind (``BackpressurePolicy``), the call first waits,
        bounded, for the writers to catch up; it never waits for one slow peer.
        """
        size = self._check(message)
        if self._fleet.behind():
            await self._fleet.room()
        skip = () if exclude is None else excluded(self._registry, exclude)
        count = self._fleet.deliver(targets(self._registry, "all", None, skip), message, size)
        published = self._publish("all", None, message, exclude)
        await self._yield()
        return Delivery(count, published)

    async def send_to_one(self, identifier: str, message: Message) -> int:
        """Queue ``message`` for every socket of ``identifier``."""
        check_name("identifier", identifier)
        size = self._check(message)
        if self._fleet.behind():
            await self._fleet.room()
        count = self._fleet.deliver(targets(self._registry, "one", identifier), message, size)
        published = self._publish("one", identifier, message, None)
        await self._yield()
        return Delivery(count, published)

    async def send_to_many(self, identifiers: Iterable[str], message: Message) -> int:
        """Queue ``message`` once for each socket of the named identifiers (a name given
        twice still reaches its sockets once)."""
        if isinstance(identifiers, str | bytes):
            raise WrongType("identifiers must be an iterable of str, not a single str")
        if not isinstance(identifiers, Iterable):
            raise WrongType(f"identifiers must be an iterable of str, got {identifiers!r}")
        given = list(identifiers)
        for name in given:
            check_name("identifier", name)  # before hashing: a list inside is a WrongType
        names = list(dict.fromkeys(given))
        size = self._check(message)
        if self._fleet.behind():
            await self._fleet.room()
        count = self._fleet.deliver(targets(self._registry, "many", names), message, size)
        published = self._publish("many", names, message, None)
        await self._yield()
        return Delivery(count, published)

    async def send_to_group(
        self, group: str, message: Message, *, exclude: object = None
    ) -> Delivery:
        """Queue ``message`` for every socket of every member of ``group``; for a group that
        keeps history, keep it there too, as one operation (``Delivery.position``)."""
        check_name("group", group)
        size = self._check(message)
        if self._fleet.behind():
            await self._fleet.room()
        skip = () if exclude is None else excluded(self._registry, exclude)
        policy = self._history.policy_for(group)
        if policy is not None:
            names = [] if exclude is None else excluded_names(exclude)
            count, position, framed = await self._history.send(group, message, policy, skip, names)
            published = framed is None or self._publish("group", group, framed, exclude)
            await self._yield()
            return Delivery(count, published, position)
        count = self._fleet.deliver(targets(self._registry, "group", group, skip), message, size)
        published = self._publish("group", group, message, exclude)
        await self._yield()
        return Delivery(count, published)

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Queue several fan-outs as one burst: nothing is written until the block ends.

        Outside a batch every fan-out call yields to the event loop, so writers run between
        two calls and no producer starves the others. Inside one, calls only check for
        cancellation: each connection then receives the whole burst in one write (one
        system call where its library allows), which is far cheaper per message. Make the
        overflow policy's queue hold the largest burst one connection receives.
        """
        self._batching += 1
        try:
            yield
        finally:
            self._batching -= 1
        await checkpoint()

    async def _yield(self) -> None:
        if self._batching:
            await checkpoint_if_cancelled()
        else:
            await checkpoint()

    def _check(self, message: object) -> int:
        size = self._fleet.check_message(message)
        if self._backplane is not None:
            self._backplane.check_message(message)  # what the other nodes can be sent
        return size

    # -- numbers -------------------------------------------------------------------------------

    def stats(self) -> FleetStats:
        """Counts per state, queue depth, drops by reason, callback errors, groups."""
        return snapshot(self._fleet, self._history, self._backplane)

    def __repr__(self) -> str:
        status = "running" if self._fleet.context.running else "stopped"
        return f"<ConnectionManager {status}, {len(self._registry)} connection(s)>"

    def __getstate__(self) -> Any:
        raise TypeError("a ConnectionManager holds live sockets and cannot be pickled")
