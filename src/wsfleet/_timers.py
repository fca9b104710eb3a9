"""Time-driven behaviour: heartbeats, idleness and retry attempts, on one timer task.

Heartbeat. Every ``ping_interval`` a ping is queued at the head of the connection's queue;
it counts as sent when a transport takes it. Any inbound frame after that (a pong or a
message) proves the peer alive. No inbound frame within ``ping_timeout`` of the ping: the
connection goes to ERROR "heartbeat timeout" and its socket is closed with 1011. A ping that
cannot even be written within ``ping_interval + ping_timeout`` means the same.

Idle. ``idle_after`` seconds without an inbound *message* (pongs do not count, or keepalive
would keep every connection busy) move CONNECTED to IDLE; the next message moves it back.

Retry. When the machine asks for a retry after a delay, a deadline is set; when it passes,
the machine is asked again (``retry_due``: the budget may have run out meanwhile) and, in
RECONNECTING, the connection's reconnector is run in a task: its new transport brings the
connection back to CONNECTED, its failure back to ERROR. Each request carries a serial, so
a superseded retry never fires.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import anyio

from ._connection import Connection, Reconnector
from ._deadlines import Deadlines, Kind
from ._outbox import WRITABLE
from .errors import FinalRefusal, ResumeExpired
from .fsm.machine import Lifecycle
from .fsm.states import ConnectionState

if TYPE_CHECKING:
    from ._manager import ConnectionManager

__all__ = ["Timers"]

logger = logging.getLogger("wsfleet")

C = ConnectionState.CONNECTED
E = ConnectionState.ERROR
R = ConnectionState.RECONNECTING
D = ConnectionState.DISCONNECTED
I = ConnectionState.IDLE  # noqa: E741


class Timers:
    def __init__(self, manager: ConnectionManager) -> None:
        self._manager = manager
        self._deadlines = Deadlines()
        self._wake = anyio.Event()
        self.heartbeat_timeouts = 0

    def bind_loop(self) -> None:
        self._wake = anyio.Event()

    def forget(self, conn: Connection) -> None:
        """``conn`` was unregistered: its deadlines are stale (see ``Deadlines.forget``)."""
        entries = int(conn.hb_armed) + int(conn.idle_armed)
        if entries:
            self._deadlines.forget(entries)

    def push(self, when: float, kind: Kind, conn: Connection, token: int = 0) -> None:
        if self._deadlines.push(when, kind, conn, token):
            self._wake.set()

    async def run(self) -> None:
        """The timer task."""
        while True:
            now = anyio.current_time()
            for kind, conn, token in self._deadlines.pop_due(now):
                try:
                    if kind == "heartbeat":
                        self._heartbeat(conn, now)
                    elif kind == "idle":
                        self._idle(conn, now)
                    else:
                        self._retry(conn, token)
                except Exception:  # a bug here must not stop every other timer
                    logger.exception("wsfleet timer %s for %r failed", kind, conn)
            next_at = self._deadlines.next_at()
            wait = math.inf if next_at is None else max(0.0, next_at - anyio.current_time())
            with anyio.move_on_after(wait):
                await self._wake.wait()
            if self._wake.is_set():
                self._wake = anyio.Event()

    # -- heartbeat and idle ------------------------------------------------------------------

    def arm(self, conn: Connection, reconnected: bool) -> None:
        """Start watching a connection that (re)entered CONNECTED."""
        policy = self._manager.heartbeat
        if policy is None:
            return
        now = self._manager._machine.clock.now()
        if reconnected:
            conn.last_seen = conn.last_message = conn.last_ping = now
            conn.ping_sent_at = conn.ping_queued_at = None
        if policy.ping_interval is not None and not conn.hb_armed:
            conn.hb_armed = True
            self.push(conn.last_ping + policy.ping_interval, "heartbeat", conn)
        if policy.idle_after is not None and not conn.idle_armed:
            conn.idle_armed = True
            self.push(conn.last_message + policy.idle_after, "idle", conn)

    def _heartbeat(self, conn: Connection, now: float) -> None:
        policy = self._manager.heartbeat
        assert policy is not None
        assert policy.ping_interval is not None
        if not conn.registered or conn.state not in WRITABLE:
            conn.hb_armed = False
            return
        interval, timeout = policy.ping_interval, policy.ping_timeout
        if conn.ping_sent_at is not None:
            if conn.last_seen >= conn.ping_sent_at:
                conn.ping_sent_at = None  # answered (any inbound frame proves the peer alive)
            elif timeout is not None and now >= conn.ping_sent_at + timeout:
                self._dead(conn, "heartbeat timeout")
                return
            elif timeout is not None:
                self.push(conn.ping_sent_at + timeout, "heartbeat", conn)
                return
        if conn.ping_queued_at is not None:
            # The ping waits behind a writer that cannot get rid of its batch.
            limit = conn.ping_queued_at + interval + (timeout or 0.0)
            if now >= limit:
                self._dead(conn, "heartbeat timeout (ping not delivered)")
            else:
                self.push(limit, "heartbeat", conn)
            return
        due = conn.last_ping + interval
        if now < due:
            self.push(due, "heartbeat", conn)
            return
        conn.last_ping = now
        conn.ping_queued_at = now
        self._manager._outbox.queue_ping(conn)
        # Back at whichever comes first: the next ping's time (a pong answered by then lets
        # it go out on schedule) or the pong's deadline.
        wake = interval if timeout is None else min(interval, timeout)
        self.push(now + wake, "heartbeat", conn)

    def _dead(self, conn: Connection, reason: str) -> None:
        self.heartbeat_timeouts += 1
        conn.hb_armed = False
        logger.info("%r: %s", conn, reason)
        self._manager._outbox.evict(conn, 1011, reason)

    def _idle(self, conn: Connection, now: float) -> None:
        policy = self._manager.heartbeat
        assert policy is not None
        assert policy.idle_after is not None
        if not conn.registered or conn.state is not C:
            conn.idle_armed = False
            return
        due = conn.last_message + policy.idle_after
        if now >= due:
            conn.idle_armed = False
            self._manager._machine.request(conn, I, f"no activity for {policy.idle_after:g} s")
        else:
            self.push(due, "idle", conn)

    # -- retries -------------------------------------------------------------------------------

    def retry_requested(self, model: Lifecycle, delay: float) -> None:
        """The machine's ``on_retry`` hook: supersede any earlier retry of this connection."""
        assert isinstance(model, Connection)
        model.retry_serial += 1
        now = self._manager._machine.clock.now()
        self.push(now + delay, "retry", model, model.retry_serial)

    def _retry(self, conn: Connection, token: int) -> None:
        if not conn.registered or token != conn.retry_serial:
            return
        changes = self._manager._machine.retry_due(conn)
        if not changes or changes[-1].new is not R:
            return
        if conn.reconnector is None:
            self._manager._machine.request(
                conn, E, "attempt failed: nothing can reconnect this socket"
            )
        else:
            self._manager._spawn(self.attempt, conn, conn.reconnector, name="wsfleet retry")

    async def attempt(self, conn: Connection, reconnector: Reconnector) -> None:
        """Run one attempt; its transport replaces the old one, its failure means ERROR."""
        manager = self._manager
        serial = conn.retry_serial
        try:
            transport = await reconnector(conn)
        except ResumeExpired as exc:
            if conn.registered and conn.state is R:
                manager._machine.request(conn, D, str(exc) or "resume window expired")
            return
        except FinalRefusal as exc:  # e.g. HTTP 403 to the handshake: retrying will not help
            if conn.registered and conn.state is R and conn.retry_serial == serial:
                manager._machine.request(conn, D, f"refused: {exc}")
            return
        except Exception as exc:
            if conn.registered and conn.state is R and conn.retry_serial == serial:
                text = f"attempt failed: {type(exc).__name__}: {exc}"
                manager._machine.request(conn, E, text)
            return
        # No await between the reconnector's return and the decision below: an outbound
        # holder relies on it (it starts reading only once the transport is installed).
        if not conn.registered or conn.state is not R:
            await manager._outbox.close(transport, 1000, "no longer wanted")
            return
        manager._replace_transport(conn, transport)
        manager._machine.request(conn, C, "reconnected")
