"""The ConnectionManager: registry, groups, fan-out, states, callbacks, resumption.

This module holds the public API and wires the parts together:

* ``_registry``: who is connected, under which identifier, in which groups and states;
* ``fsm``: the shared state machine every connection's state change goes through;
* ``_outbox``: bounded queues, one flusher, writer tasks only for peers that push back;
* ``_timers``: heartbeats, idleness and retry attempts on one heap of deadlines;
* ``_callbacks``: state-change callbacks, each run after the change in a task of its own;
* ``_session`` and ``_outbound``: the life of a server-side socket, and client connections
  that the manager dials and redials.

All tasks live in the manager's task group: leaving ``async with`` flushes what is queued,
closes every socket with 1001 and waits for the tasks, each step bounded in time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVarTuple

import anyio
import anyio.abc
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled

from ._backplane import Backplane
from ._callbacks import CallbackHandle, Callbacks, StateCallback
from ._connection import Connection, Reconnector
from ._loop import loop_clock, loop_thread
from ._outbound import MessageHandler, OutboundSocket, Unconnected, dial
from ._outbox import WRITABLE, Outbox, message_size
from ._registry import Registry, check_name
from ._resumption import Resumption
from ._session import Session, open_session
from ._stats import Delivery, FleetStats
from ._timers import Timers
from .closecodes import is_clean, is_final
from .errors import (
    AlreadyRegistered,
    InvalidArgument,
    ManagerClosed,
    MessageTooLarge,
    UnknownSocket,
    WrongThread,
    WrongType,
)
from .fsm.clock import MonotonicClock
from .fsm.machine import FleetMachine, StateChange
from .fsm.states import ConnectionState
from .policies.heartbeat import HeartbeatPolicy
from .policies.overflow import OverflowPolicy
from .policies.retry import RetryPolicy
from .transport import Message, Transport, adapter_for, no_adapter

__all__ = ["ConnectionManager"]

logger = logging.getLogger("wsfleet")

_Args = TypeVarTuple("_Args")

C = ConnectionState.CONNECTED
I = ConnectionState.IDLE  # noqa: E741
E = ConnectionState.ERROR
R = ConnectionState.RECONNECTING
D = ConnectionState.DISCONNECTED


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
        heartbeat: HeartbeatPolicy | None = None,
        overflow: OverflowPolicy | None = None,
        backplane: Backplane | None = None,
        resume_window: float | None = None,
        callback_timeout: float = 5.0,
        shutdown_timeout: float = 5.0,
        close_timeout: float = 2.0,
    ) -> None:
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise WrongType(f"retry_policy must be a RetryPolicy, got {retry_policy!r}")
        if heartbeat is not None and not isinstance(heartbeat, HeartbeatPolicy):
            raise WrongType(f"heartbeat must be a HeartbeatPolicy, got {heartbeat!r}")
        if overflow is not None and not isinstance(overflow, OverflowPolicy):
            raise WrongType(f"overflow must be an OverflowPolicy, got {overflow!r}")
        if backplane is not None and not isinstance(backplane, Backplane):
            raise WrongType(f"backplane must be a Backplane or None, got {backplane!r}")
        seconds = [
            ("callback_timeout", callback_timeout),
            ("shutdown_timeout", shutdown_timeout),
            ("close_timeout", close_timeout),
        ]
        if resume_window is not None:
            seconds.append(("resume_window", resume_window))
        for name, value in seconds:
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise InvalidArgument(f"{name} must be a number of seconds > 0, got {value!r}")
        self.heartbeat = heartbeat
        self.overflow = overflow if overflow is not None else OverflowPolicy()
        self.resume_window = None if resume_window is None else float(resume_window)
        self.shutdown_timeout = float(shutdown_timeout)
        self.close_timeout = float(close_timeout)
        self._registry = Registry()
        self._outbox = Outbox(self)
        self._timers = Timers(self)
        self._callbacks = Callbacks(float(callback_timeout))
        self._machine = FleetMachine(
            retry_policy=retry_policy,
            on_change=self._state_changed,
            on_retry=self._timers.retry_requested,
        )
        self._backplane = backplane
        self._tg: anyio.abc.TaskGroup | None = None
        self._closing = False
        #: The thread the manager's loop runs in, once entered (see ``_running``).
        self._thread: int | None = None
        self._batching = 0
        self._resumption = Resumption(self)

    # -- lifetime --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._tg is not None or self._closing:
            raise ManagerClosed("a ConnectionManager can be entered once")
        # A clock that needs no task: pongs arrive from library callbacks (see _loop).
        self._machine.clock = MonotonicClock(loop_clock())
        self._thread = loop_thread()
        # Events are bound to the running event loop on asyncio: make them here.
        self._outbox.bind_loop()
        self._timers.bind_loop()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._outbox.run, name="wsfleet flusher")
        tg.start_soon(self._timers.run, name="wsfleet timers")
        tg.start_soon(self._callbacks.run, name="wsfleet callbacks")
        if self._backplane is not None:
            await tg.start(self._backplane.run, self, name="wsfleet backplane")
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
            self._closing = True
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
        self._closing = True
        with anyio.move_on_after(self.shutdown_timeout):
            while self._outbox.busy():
                self._outbox.flush_soon()
                await anyio.sleep(0.005)
        conns = list(self._registry)
        async with anyio.create_task_group() as closers:
            for conn in conns:
                closers.start_soon(self._outbox.close, conn.transport, 1001, "going away")
        for conn in conns:
            self._unregister(conn, "manager closed")
        if self._backplane is not None:
            await self._backplane.close()
        with anyio.move_on_after(self.shutdown_timeout):
            await self._callbacks.wait_idle()

    def _running(self, *, cleanup: bool = False) -> anyio.abc.TaskGroup:
        """The task group, for a call that changes the fleet; refused outside the block.

        ``cleanup`` calls (unregister, close, leaving a group) are still taken while the
        manager shuts down, when handlers end and clean up after themselves.
        """
        if self._thread is not None and loop_thread() != self._thread:
            raise WrongThread(
                "a ConnectionManager is called from its event loop's thread only: from "
                "another thread, go through the loop with anyio.from_thread.run_sync(...) "
                "(anyio.from_thread.run(...) for coroutines) or a blocking portal"
            )
        if self._tg is None:
            if self._closing:
                raise ManagerClosed("the manager's block has ended: it takes no more calls")
            raise ManagerClosed("the manager is not running (use 'async with ConnectionManager()')")
        if self._closing and not cleanup:
            raise ManagerClosed("the manager is shutting down: it takes no new work")
        return self._tg

    def _spawn(
        self, func: Callable[[*_Args], Coroutine[Any, Any, None]], *args: *_Args, name: str
    ) -> None:
        """Start an internal task; unlike the public calls, this works while shutting down.

        Flushing on exit needs writers, and an eviction on exit still closes its socket.
        """
        tg = self._tg
        assert tg is not None, "internal tasks start only inside the manager's task group"
        tg.start_soon(func, *args, name=name)

    # -- registry ------------------------------------------------------------------------

    def register(self, socket: object, identifier: str) -> Connection:
        """Add a socket under ``identifier`` (one identifier may hold several sockets).

        ``socket`` is a ``Transport`` or a socket of a library whose adapter is imported.
        The connection starts CONNECTED.
        """
        return self._register(socket, identifier)

    def _transport_for(self, socket: object) -> Transport:
        if isinstance(socket, Transport):
            return socket
        factory = adapter_for(socket)  # imports a shipped adapter on first use
        if factory is None:
            raise WrongType(no_adapter(socket))
        return factory(socket)

    def _register(
        self,
        socket: object,
        identifier: str,
        *,
        transport: Transport | None = None,
        initial: ConnectionState = C,
        retry_policy: RetryPolicy | None = None,
    ) -> Connection:
        self._running()
        check_name("identifier", identifier)
        if self._registry.get(socket) is not None:
            raise AlreadyRegistered(f"{socket!r} is already registered")
        if transport is None:
            transport = self._transport_for(socket)
        conn = Connection(self, socket, transport, identifier, self._machine.clock.now())
        conn.retry_policy = retry_policy
        transport.attach(conn)
        self._registry.add(conn)
        if self._backplane is not None and len(self._registry.by_identifier[identifier]) == 1:
            # Groups belong to the identifier fleet-wide: take those it has on other nodes.
            for group in self._backplane.view.groups_of(identifier):
                self._registry.join(identifier, group)
            self._backplane.membership("online", identifier)
        if initial is C:
            self._resumption.registered(conn)
        self._machine.start(conn, initial, "registered" if initial is C else "dialling")
        return conn

    def unregister(self, socket: object) -> bool:
        """Move the socket to DISCONNECTED and forget it; ``False`` if it is not registered.

        Does not close the socket (``close`` does both). Messages still queued for it are
        dropped and counted.
        """
        self._running(cleanup=True)
        conn = self._registry.get(socket)
        if conn is None:
            return False
        self._unregister(conn, "unregistered")
        return True

    def _unregister(self, conn: Connection, reason: str) -> None:
        if not conn.registered:
            return
        # Before the change to DISCONNECTED, which would count these drops as "disconnected".
        self._outbox.discard(conn, "unregistered")
        conn.held = False
        conn.registered = False  # first: the DISCONNECTED hook must not remove it again
        if conn.state is not D:
            self._machine.request(conn, D, reason)
        if conn.writer_scope is not None:
            conn.writer_scope.cancel()
        if isinstance(conn.socket, OutboundSocket):
            # The manager dialled it, so nobody else would close it (nor end its reader).
            close = self._outbox.close
            self._spawn(close, conn.transport, 1000, "unregistered", name="wsfleet close")
        self._registry.remove(conn)
        self._timers.forget(conn)
        if self._backplane is not None and conn.identifier not in self._registry.by_identifier:
            self._backplane.membership("offline", conn.identifier)
        self._resumption.forget(conn)

    async def close(self, socket: object, code: int = 1000, reason: str = "") -> None:
        """Close the socket with ``code`` and ``reason``, then unregister it."""
        self._running(cleanup=True)
        conn = self._connection(socket)
        await self._outbox.close(conn.transport, code, reason)
        self._unregister(conn, f"closed by the server ({code})")

    def clear(self) -> None:
        """Unregister every connection (callbacks fire); groups empty with them."""
        self._running(cleanup=True)
        for conn in list(self._registry):
            self._unregister(conn, "cleared")

    def count(self) -> int:
        """Registered sockets."""
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
        return [conn.socket for conn in self._registry.connections_of(identifier)]

    def identifiers(self) -> set[str]:
        return set(self._registry.by_identifier)

    # -- groups --------------------------------------------------------------------------

    def add_to_group(self, identifier: str, group: str) -> None:
        """Put every socket of ``identifier``, present and future, in ``group``; idempotent.

        With a backplane the membership is fleet-wide: other nodes holding sockets of
        ``identifier`` put them in the group too. ``identifier`` must have a socket here.
        """
        self._running()
        check_name("identifier", identifier)
        check_name("group", group)
        new = group not in self._registry.memberships.get(identifier, ())
        self._registry.join(identifier, group)
        if new and self._backplane is not None:
            self._backplane.membership("join", identifier, group)

    def remove_from_group(self, identifier: str, group: str) -> None:
        """Take ``identifier`` out of ``group``; idempotent, even once it has no socket left."""
        self._running(cleanup=True)
        check_name("identifier", identifier)
        check_name("group", group)
        was = group in self._registry.memberships.get(identifier, ())
        self._registry.leave(identifier, group)
        if was and self._backplane is not None:
            self._backplane.membership("leave", identifier, group)

    def get_group_members(self, group: str) -> set[str]:
        """Identifiers in ``group``, on every node (a copy); empty for an unknown group."""
        check_name("group", group)
        members = set(self._registry.groups.get(group, ()))
        if self._backplane is not None:
            members |= self._backplane.view.members(group)
        return members

    def groups_of(self, identifier: str) -> set[str]:
        check_name("identifier", identifier)
        groups = set(self._registry.memberships.get(identifier, ()))
        if self._backplane is not None:
            groups |= self._backplane.view.groups_of(identifier)
        return groups

    def groups(self) -> set[str]:
        return set(self._registry.groups)

    # -- the fleet across nodes (a backplane) ----------------------------------------------------

    @property
    def node_id(self) -> str | None:
        """This manager's node in its fleet; ``None`` without a backplane."""
        return None if self._backplane is None else self._backplane.node_id

    def presence(self, identifier: str) -> set[str]:
        """The nodes where ``identifier`` has sockets (this one's id, or "local", included)."""
        check_name("identifier", identifier)
        here = {self.node_id or "local"} if identifier in self._registry.by_identifier else set()
        if self._backplane is not None:
            here |= self._backplane.view.presence(identifier)
        return here

    def online_count(self) -> int:
        """Identifiers with at least one socket on any node."""
        if self._backplane is None:
            return len(self._registry.by_identifier)
        return len(set(self._registry.by_identifier) | self._backplane.view.identifiers())

    async def disconnect_identifier(
        self, identifier: str, code: int = 1000, reason: str = ""
    ) -> int:
        """Close every socket of ``identifier`` on every node; returns how many were here."""
        check_name("identifier", identifier)
        self._running()
        closed = self._kick_local(identifier, code, reason)
        if self._backplane is not None:
            self._backplane.kick(identifier, code, reason)
        await checkpoint()
        return closed

    def _kick_local(self, identifier: str, code: int, reason: str) -> int:
        conns = list(self._registry.connections_of(identifier))
        for conn in conns:
            self._spawn(self._outbox.close, conn.transport, code, reason, name="wsfleet kick")
            self._unregister(conn, f"disconnected by the server ({code})")
        return len(conns)

    def _mirror_membership(self, identifier: str, group: str, *, joined: bool) -> None:
        """Another node changed ``identifier``'s groups: follow, if it has sockets here."""
        if identifier in self._registry.by_identifier:
            if joined:
                self._registry.join(identifier, group)
            else:
                self._registry.leave(identifier, group)

    def _deliver_remote(
        self, to: str, target: Any, message: Message, data: Mapping[str, Any]
    ) -> int:
        """Carry out another node's fan-out on this node's sockets (never republished)."""
        size = message_size(message)
        if size > self.overflow.max_message_size:
            self._outbox.count_drop("backplane: too large here")
            return 0
        registry = self._registry
        skip = set(data.get("exclude", ()))
        targets: list[Connection]
        if to == "all":
            targets = [c for c in registry.by_socket.values() if c.identifier not in skip]
        elif to == "one":
            targets = list(registry.connections_of(target))
        elif to == "many":
            targets = [c for name in dict.fromkeys(target) for c in registry.connections_of(name)]
        else:
            targets = [
                c
                for name in list(registry.groups.get(target, ()))
                if name not in skip
                for c in registry.connections_of(name)
            ]
        return self._outbox.fan_out(targets, message, size)

    def _publish(
        self, to: str, target: str | list[str] | None, message: Message, exclude: object
    ) -> bool:
        if self._backplane is None:
            return False
        names: list[str] = []
        if isinstance(exclude, str):
            names = [exclude]
        elif (
            exclude is not None and not isinstance(exclude, bytes) and isinstance(exclude, Iterable)
        ):
            names = [item for item in exclude if isinstance(item, str)]
        return self._backplane.send(to, target, message, names)

    # -- states ----------------------------------------------------------------------------

    def get_connection_state(self, socket: object) -> ConnectionState | None:
        conn = self._registry.get(socket)
        return None if conn is None else conn.state

    def get_state_timestamp(self, socket: object) -> datetime | None:
        """When the socket entered its current state (aware UTC); ``None`` if unknown."""
        conn = self._registry.get(socket)
        return None if conn is None else self._machine.timestamp(conn)

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
        self._running(cleanup=True)
        if not isinstance(state, ConnectionState):
            raise WrongType(f"state must be a ConnectionState, got {state!r}")
        conn = self._connection(socket)
        self._machine.request(conn, state, reason if reason is not None else "set by application")

    def set_retry_policy(self, socket: object, policy: RetryPolicy | None) -> None:
        """This connection's own policy; ``None`` returns it to the manager's default."""
        self._running()
        if policy is not None and not isinstance(policy, RetryPolicy):
            raise WrongType(f"policy must be a RetryPolicy or None, got {policy!r}")
        self._connection(socket).retry_policy = policy

    def set_reconnector(self, socket: object, reconnector: Reconnector | None) -> None:
        """What a retry attempt does for this connection (adapters set it).

        ``reconnector(connection)`` returns a new ``Transport`` or raises to fail the attempt.
        """
        self._running()
        if reconnector is not None and not callable(reconnector):
            raise WrongType(f"reconnector must be callable or None, got {reconnector!r}")
        self._connection(socket).reconnector = reconnector

    def on_state_change(self, callback: StateCallback) -> CallbackHandle:
        """Call ``callback(socket, old, new)`` (or ``callback(change)``) after every change.

        Sync or async; usable as a decorator. ``old`` is ``None`` for a new connection.
        Returns a handle whose ``remove()`` unsubscribes. Callbacks may be added before the
        manager is entered.
        """
        if self._tg is not None or self._closing:
            self._running(cleanup=True)  # from the loop's thread, and not once it has ended
        return self._callbacks.add(callback)

    def session(
        self, socket: object, identifier: str, *, resume: str | None = None
    ) -> AbstractAsyncContextManager[Session]:
        """Register ``socket`` for the life of a handler; iterate the session to receive.

        ``async with manager.session(ws, "alice") as session: async for msg in session: ...``
        A close from the peer ends the iteration (1000/1001/1005: DISCONNECTED, other codes:
        ERROR); leaving the block closes the socket if still open and unregisters it, or,
        after an abnormal end with a retry policy, holds the session for the client to
        resume. ``resume`` is the ``session.resume_token`` the client got last time: when it
        names a held session of the same identifier, the new socket takes it over (its
        groups kept, its buffered messages delivered first); any other value starts afresh.
        """
        return open_session(self, socket, identifier, resume)

    def touch(self, socket: object, *, pong: bool = False) -> None:
        """Report inbound activity on ``socket`` (adapters call it for each message/pong)."""
        self._running(cleanup=True)
        self._touch(self._connection(socket), pong)

    # -- resumption (see _resumption.py) and outbound connections ---------------------------------

    def _take_over(self, socket: object, identifier: str, token: str) -> Connection | None:
        return self._resumption.take_over(socket, identifier, token)

    def _hold(self, conn: Connection) -> bool:
        return self._resumption.hold(conn)

    def resume_window_of(self, conn: Connection) -> float:
        """How long a held session waits: the manager's window, or its policy's whole schedule."""
        return self._resumption.window_of(conn)

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
        return await dial(self, url, identifier, retry_policy, backend, on_message, options)

    def _replace_transport(self, conn: Connection, transport: Transport) -> None:
        """Swap in a new socket; the old one is detached (its late reports are ignored)."""
        old = conn.transport
        if old is transport:
            return
        old.connection = None
        conn.transport = transport
        transport.attach(conn)
        if not isinstance(old, Unconnected):
            self._spawn(self._outbox.close, old, 1000, "replaced", name="wsfleet close")

    # -- fan-out -----------------------------------------------------------------------------

    async def broadcast(self, message: Message, *, exclude: object = None) -> int:
        """Queue ``message`` for every connection except ``exclude`` (sockets or identifiers).

        Returns how many connections it was queued for (see ``Delivery``). Inside
        ``async with manager.batch():`` a burst is queued whole before anything is written.
        """
        size = self._check(message)
        if exclude is None:
            targets: Iterable[Connection] = list(self._registry.by_socket.values())
        else:
            skip = self._excluded(exclude)
            targets = [c for k, c in self._registry.by_socket.items() if k not in skip]
        count = self._outbox.fan_out(targets, message, size)
        published = self._publish("all", None, message, exclude)
        await self._yield()
        return Delivery(count, published)

    async def send_to_one(self, identifier: str, message: Message) -> int:
        """Queue ``message`` for every socket of ``identifier``."""
        check_name("identifier", identifier)
        size = self._check(message)
        count = self._outbox.fan_out(list(self._registry.connections_of(identifier)), message, size)
        published = self._publish("one", identifier, message, None)
        await self._yield()
        return Delivery(count, published)

    async def send_to_many(self, identifiers: Iterable[str], message: Message) -> int:
        """Queue ``message`` once for each socket of the named identifiers (duplicates too)."""
        if isinstance(identifiers, str | bytes):
            raise WrongType("identifiers must be an iterable of str, not a single str")
        if not isinstance(identifiers, Iterable):
            raise WrongType(f"identifiers must be an iterable of str, got {identifiers!r}")
        given = list(identifiers)
        for name in given:
            check_name("identifier", name)  # before hashing: a list inside is a WrongType
        names = list(dict.fromkeys(given))
        size = self._check(message)
        targets = [c for name in names for c in self._registry.connections_of(name)]
        count = self._outbox.fan_out(targets, message, size)
        published = self._publish("many", names, message, None)
        await self._yield()
        return Delivery(count, published)

    async def send_to_group(self, group: str, message: Message, *, exclude: object = None) -> int:
        """Queue ``message`` for every socket of every member of ``group``."""
        check_name("group", group)
        size = self._check(message)
        members = self._registry.groups.get(group, ())
        skip = self._excluded(exclude) if exclude is not None else ()
        targets = [
            c
            for name in list(members)
            for c in self._registry.connections_of(name)
            if id(c.socket) not in skip
        ]
        count = self._outbox.fan_out(targets, message, size)
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

    def _send_to_connections(self, conns: Iterable[Connection], message: Message) -> int:
        size = self._check(message)
        return self._outbox.fan_out([c for c in conns if c.registered], message, size)

    def _check(self, message: object) -> int:
        self._running()
        size = message_size(message)
        limit = self.overflow.max_message_size
        if size > limit:
            raise MessageTooLarge(size, limit)
        if self._backplane is not None:
            self._backplane.check_message(message)
        return size

    def _excluded(self, exclude: object) -> set[int]:
        registry = self._registry
        if isinstance(exclude, str) or registry.get(exclude) is not None:
            items: Iterable[object] = (exclude,)
        elif isinstance(exclude, Iterable):
            items = exclude
        else:
            items = (exclude,)
        skip: set[int] = set()
        for item in items:
            if isinstance(item, str):
                skip.update(id(c.socket) for c in registry.connections_of(item))
            elif registry.get(item) is not None:
                skip.add(id(item))
        return skip

    # -- inbound events from transports ------------------------------------------------------

    def _touch(self, conn: Connection, pong: bool) -> None:
        if not conn.registered:
            return
        now = self._machine.clock.now()
        conn.last_seen = now
        if not pong:
            conn.last_message = now
            if conn.state is I:
                self._machine.request(conn, C, "activity")

    def _transport_closed(self, conn: Connection, code: int | None, reason: str) -> None:
        if not conn.registered or conn.state not in WRITABLE:
            return
        if is_clean(code):
            self._machine.request(conn, D, f"closed ({code}{': ' + reason if reason else ''})")
        else:
            self._machine.request(conn, E, f"abnormal close ({code or 1006})")

    def _outbound_closed(self, conn: Connection, code: int, reason: str) -> None:
        """A server closed a client connection: come back later, unless it said not to."""
        if self._closing or not conn.registered or conn.state not in WRITABLE:
            return  # closing, the manager closed it itself: no error, no retry
        text = f"closed by the server ({code}{': ' + reason if reason else ''})"
        self._machine.request(conn, D if is_final(code) else E, text)

    def _transport_failed(self, conn: Connection, error: BaseException | str) -> None:
        if not conn.registered or conn.state not in (C, I, R):
            return
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self._machine.request(conn, E, f"I/O failure: {text}")

    # -- state changes: indexes, side effects, callbacks --------------------------------------

    def _state_changed(self, change: StateChange) -> None:
        conn = change.connection
        assert isinstance(conn, Connection)
        self._registry.moved(conn, change.old, change.new)
        new = change.new
        if new is C:
            self._timers.arm(conn, reconnected=change.old is R)
            self._outbox.schedule(conn)
        elif new is D:
            self._outbox.discard(conn, "disconnected")
        if new in (E, D) and conn.writer_scope is not None:
            conn.writer_scope.cancel()
        if self._callbacks:
            self._callbacks.publish(change, conn.socket)
        if new is D and conn.registered:
            # Nothing holds a DISCONNECTED connection (no retry is coming, no resume window
            # is open): it is no longer active, so it leaves the registry at once and
            # ``count()``, the groups and ``stats()`` stop showing it.
            self._unregister(conn, change.reason or "disconnected")

    # -- numbers -------------------------------------------------------------------------------

    def stats(self) -> FleetStats:
        """Counts per state, queue depth, drops by reason, callback errors, groups."""
        registry = self._registry
        outbox = self._outbox
        drops = dict(outbox.drops)
        if self._callbacks.dropped:
            drops["callback backlog"] = self._callbacks.dropped
        backplane = self._backplane
        if backplane is not None:
            for key, value in backplane.stats.items():
                if key.startswith("dropped: ") and value:
                    drops["backplane: " + key.removeprefix("dropped: ")] = value
        return FleetStats(
            connections=len(registry),
            held=len(registry.by_state[E]) + len(registry.by_state[R]),
            identifiers=len(registry.by_identifier),
            groups=len(registry.groups),
            states={state.name: len(conns) for state, conns in registry.by_state.items()},
            queued_messages=outbox.queued_messages,
            queued_bytes=outbox.queued_bytes,
            sent_messages=outbox.sent_messages,
            drops=drops,
            callback_errors=self._callbacks.errors,
            callback_timeouts=self._callbacks.timeouts,
            pings_sent=outbox.pings_sent,
            heartbeat_timeouts=self._timers.heartbeat_timeouts,
            node_id=None if backplane is None else backplane.node_id,
            backplane_state=None if backplane is None else backplane.state.name,
            backplane=None if backplane is None else dict(backplane.stats),
        )

    def __repr__(self) -> str:
        status = "running" if self._tg is not None and not self._closing else "stopped"
        return f"<ConnectionManager {status}, {len(self._registry)} connection(s)>"

    def __getstate__(self) -> Any:
        raise TypeError("a ConnectionManager holds live sockets and cannot be pickled")
