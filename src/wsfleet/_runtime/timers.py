"""Time-driven behaviour: heartbeats, idleness and retries, on one timer task.

Heartbeat. Every ``ping_interval`` a ping is queued at the head of the connection's queue;
it counts as sent when a transport takes it. Any inbound frame after that (a pong or a
message) proves the peer alive. No inbound frame within ``ping_timeout`` of the ping: the
connection has failed ("heartbeat timeout"; the owner evicts it with 1011). A ping that
cannot even be written within ``ping_interval + ping_timeout`` means the same.

Idle. ``idle_after`` seconds without an inbound *message* (pongs do not count, or keepalive
would keep every connection busy) make a CONNECTED connection idle; the next message makes
it CONNECTED again (the owner changes the states).

Retry. A change into ERROR that carries ``retry_in`` sets a deadline; when it passes, the
owner is told the retry is due (it asks the machine again: the budget may have run out
meanwhile). Each request carries a serial, so a superseded retry never fires.

The timers keep their bookkeeping in each connection's ``_beat`` (``Liveness``) and tell
their owner what fell due through ``TimerReports``; they change no state themselves.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

import anyio

from ..fsm.states import ConnectionState
from ..policies.heartbeat import HeartbeatPolicy
from .connection import Connection
from .context import Context
from .deadlines import Deadlines, Kind

__all__ = ["TimerReports", "Timers"]

logger = logging.getLogger("wsfleet")

C = ConnectionState.CONNECTED


class TimerReports(Protocol):
    """What fell due, for the timers' owner to act on."""

    def ping_due(self, conn: Connection) -> None:
        """Queue a ping for ``conn`` (at the head of its queue)."""

    def heartbeat_failed(self, conn: Connection, reason: str) -> None:
        """``conn``'s peer did not answer in time: it has failed."""

    def went_idle(self, conn: Connection, reason: str) -> None:
        """``conn`` has had no inbound message for the idle period."""

    def retry_due(self, conn: Connection) -> None:
        """The delay of ``conn``'s retry has passed."""


class Timers:
    """One heap of deadlines for the fleet (see ``Deadlines``) and the task that fires them."""

    def __init__(
        self, context: Context, heartbeat: HeartbeatPolicy | None, reports: TimerReports
    ) -> None:
        self._context = context
        self._reports = reports
        self.heartbeat = heartbeat
        self._deadlines = Deadlines()
        self._wake = anyio.Event()
        self.heartbeat_timeouts = 0

    def bind_loop(self) -> None:
        self._wake = anyio.Event()

    def forget(self, conn: Connection) -> None:
        """``conn`` was unregistered: its deadlines are stale (see ``Deadlines.forget``)."""
        beat = conn._beat
        entries = int(beat.hb_armed) + int(beat.idle_armed)
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
                    elif conn.registered and token == conn._beat.retry_serial:
                        self._reports.retry_due(conn)
                except Exception:  # a bug here must not stop every other timer
                    logger.exception("wsfleet timer %s for %r failed", kind, conn)
            next_at = self._deadlines.next_at()
            wait = math.inf if next_at is None else max(0.0, next_at - anyio.current_time())
            with anyio.move_on_after(wait):
                await self._wake.wait()
            if self._wake.is_set():
                self._wake = anyio.Event()

    # -- what the owner reports -------------------------------------------------------------

    def touched(self, conn: Connection, pong: bool) -> None:
        """Inbound activity: a pong, or a message (which alone counts against idleness)."""
        beat = conn._beat
        now = self._context.now()
        beat.last_seen = now
        if not pong:
            beat.last_message = now

    def ping_written(self, conn: Connection) -> None:
        """Stamped as the ping is handed over: a transport may report the pong while writing."""
        beat = conn._beat
        beat.ping_sent_at = self._context.now()
        beat.ping_queued_at = None

    def ping_unwritten(self, conn: Connection) -> None:
        beat = conn._beat
        beat.ping_queued_at = beat.ping_sent_at
        beat.ping_sent_at = None

    def arm(self, conn: Connection, reconnected: bool) -> None:
        """Start watching a connection that (re)entered CONNECTED."""
        policy = self.heartbeat
        if policy is None:
            return
        beat = conn._beat
        if reconnected:
            now = self._context.now()
            beat.last_seen = beat.last_message = beat.last_ping = now
            beat.ping_sent_at = beat.ping_queued_at = None
        if policy.ping_interval is not None and not beat.hb_armed and conn.transport.can_ping:
            beat.hb_armed = True
            self.push(beat.last_ping + policy.ping_interval, "heartbeat", conn)
        if policy.idle_after is not None and not beat.idle_armed:
            beat.idle_armed = True
            self.push(beat.last_message + policy.idle_after, "idle", conn)

    def retry_after(self, conn: Connection, delay: float) -> None:
        """Schedule a retry in ``delay`` seconds, superseding any earlier one."""
        beat = conn._beat
        beat.retry_serial += 1
        self.push(self._context.now() + delay, "retry", conn, beat.retry_serial)

    # -- heartbeat and idle ------------------------------------------------------------------

    def _heartbeat(self, conn: Connection, now: float) -> None:
        policy = self.heartbeat
        assert policy is not None
        assert policy.ping_interval is not None
        beat = conn._beat
        if not conn.registered or not conn.writable or not conn.transport.can_ping:
            beat.hb_armed = False
            return
        interval, timeout = policy.ping_interval, policy.ping_timeout
        if beat.ping_sent_at is not None:
            if beat.last_seen >= beat.ping_sent_at:
                beat.ping_sent_at = None  # answered (any inbound frame proves the peer alive)
            elif timeout is not None and now >= beat.ping_sent_at + timeout:
                self._dead(conn, "heartbeat timeout")
                return
            elif timeout is not None:
                self.push(beat.ping_sent_at + timeout, "heartbeat", conn)
                return
        if beat.ping_queued_at is not None:
            # The ping waits behind a writer that cannot get rid of its batch.
            limit = beat.ping_queued_at + interval + (timeout or 0.0)
            if now >= limit:
                self._dead(conn, "heartbeat timeout (ping not delivered)")
            else:
                self.push(limit, "heartbeat", conn)
            return
        due = beat.last_ping + interval
        if now < due:
            self.push(due, "heartbeat", conn)
            return
        beat.last_ping = now
        beat.ping_queued_at = now
        self._reports.ping_due(conn)
        # Back at whichever comes first: the next ping's time (a pong answered by then lets
        # it go out on schedule) or the pong's deadline.
        wake = interval if timeout is None else min(interval, timeout)
        self.push(now + wake, "heartbeat", conn)

    def _dead(self, conn: Connection, reason: str) -> None:
        self.heartbeat_timeouts += 1
        conn._beat.hb_armed = False
        logger.info("%r: %s", conn, reason)
        self._reports.heartbeat_failed(conn, reason)

    def _idle(self, conn: Connection, now: float) -> None:
        policy = self.heartbeat
        assert policy is not None
        assert policy.idle_after is not None
        beat = conn._beat
        if not conn.registered or conn.state is not C:
            beat.idle_armed = False
            return
        due = beat.last_message + policy.idle_after
        if now >= due:
            beat.idle_armed = False
            self._reports.went_idle(conn, f"no activity for {policy.idle_after:g} s")
        else:
            self.push(due, "idle", conn)
