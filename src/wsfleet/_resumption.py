"""Server-side resumption: a session whose client vanished is held for it to come back.

A server cannot redial its clients, so on a server RECONNECTING means "holding the session":
when a connection that has a retry policy (or the manager's ``resume_window``) ends
abnormally, it stays registered, keeps its identifier's groups and buffers what is sent to
it (bounded by the overflow policy). A socket that opens a session with the same identifier
and the token handed to the client at registration (``session.resume_token``) takes the
session over: buffered messages first, in order, exactly once; state back to CONNECTED. The
window is the time a client following that policy would keep retrying (the sum of its
largest delays) unless set explicitly; when it closes, the session ends DISCONNECTED and its
buffer is dropped and counted. A wrong token never takes a session over.

A token is good for one resumption: the socket that takes a session over gets a fresh token
(``session.resume_token``) and the old one is void at once. A token travels in URLs, logs
and proxies; one that stayed valid would let whoever saw it take the session over again,
after the next drop.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Final

import anyio

from ._connection import Connection
from .errors import AlreadyRegistered, InvalidTransition, ResumeExpired
from .fsm.states import ConnectionState
from .policies.retry import RetryPolicy
from .transport import Transport

if TYPE_CHECKING:
    from ._manager import ConnectionManager

__all__ = ["Resumption"]

C = ConnectionState.CONNECTED
E = ConnectionState.ERROR
R = ConnectionState.RECONNECTING

#: The policy of a connection held only because the manager has a ``resume_window``.
HOLD_ONLY: Final = RetryPolicy(max_attempts=1, base_delay=0.0, max_delay=0.0, jitter=0.0)


class Resumption:
    def __init__(self, manager: ConnectionManager) -> None:
        self._manager = manager
        self._tokens: dict[str, Connection] = {}
        self._resumes: dict[Connection, anyio.Event] = {}

    def registered(self, conn: Connection) -> None:
        """Give a new server-side connection its resume token, if it can be held."""
        manager = self._manager
        if manager.resume_window is not None and manager._machine.policy_of(conn) is None:
            # A resume window alone makes sessions resumable: one "attempt", the hold.
            conn.retry_policy = HOLD_ONLY
        if manager._machine.policy_of(conn) is not None:
            self._issue(conn)

    def _issue(self, conn: Connection) -> None:
        """A fresh token for ``conn``; the one it had names nothing from now on."""
        if conn.resume_token is not None:
            self._tokens.pop(conn.resume_token, None)
        conn.resume_token = secrets.token_urlsafe(18)
        self._tokens[conn.resume_token] = conn

    def forget(self, conn: Connection) -> None:
        """``conn`` was unregistered: its token is void and its hold ends."""
        if conn.resume_token is not None:
            self._tokens.pop(conn.resume_token, None)
        resumed = self._resumes.pop(conn, None)
        if resumed is not None:
            resumed.set()  # wakes the waiting attempt, which now finds nothing to resume

    def take_over(self, socket: object, identifier: str, token: str) -> Connection | None:
        """Give a held session to a new socket, if ``token`` names one of ``identifier``'s."""
        manager = self._manager
        conn = self._tokens.get(token)
        if conn is None or conn.identifier != identifier or conn.state not in (E, R):
            return None
        if not secrets.compare_digest(token, conn.resume_token or ""):
            return None
        manager._running()
        if manager._registry.get(socket) is not None:
            raise AlreadyRegistered(f"{socket!r} is already registered")
        transport = manager._transport_for(socket)
        if conn.state is E:
            try:
                manager._machine.request(conn, R, "resuming")
            except InvalidTransition:  # no retry left: the session is over, start afresh
                return None
        manager._registry.rekey(conn, socket)
        conn.socket = socket
        manager._replace_transport(conn, transport)
        conn.held = False
        conn.reconnector = None
        waiter = self._resumes.pop(conn, None)
        if waiter is not None:
            waiter.set()
        manager._machine.request(conn, C, "resumed")
        self._issue(conn)  # one use per token (see the module docstring)
        return conn

    def hold(self, conn: Connection) -> bool:
        """Keep a session whose handler ended abnormally, for its client to resume.

        A server cannot redial, so its RECONNECTING means "holding": the session moves there
        at once (the retry delay is the client's business) and waits for a resume until the
        window closes.
        """
        manager = self._manager
        if conn.resume_token is None or conn.state not in (E, R):
            return False
        conn.held = True
        conn.reconnector = self.wait_for_resume
        if conn.state is E:
            try:
                manager._machine.request(conn, R, "holding for the client to resume")
            except InvalidTransition:  # no attempt left: nothing to hold
                conn.held = False
                return False
            manager._spawn(manager._timers.attempt, conn, self.wait_for_resume, name="wsfleet hold")
        return True

    def window_of(self, conn: Connection) -> float:
        """How long a held session waits: the manager's window, or its policy's whole schedule."""
        manager = self._manager
        if manager.resume_window is not None:
            return manager.resume_window
        policy = manager._machine.policy_of(conn)
        return 0.0 if policy is None else policy.max_total_delay()

    async def wait_for_resume(self, conn: Connection) -> Transport:
        """A held session's "attempt": wait for the client to come back within the window."""
        manager = self._manager
        started = conn.outage_started if conn.outage_started is not None else conn.changed_at
        remaining = started + self.window_of(conn) - manager._machine.clock.now()
        waiter = self._resumes.setdefault(conn, anyio.Event())
        with anyio.move_on_after(max(0.0, remaining)):
            await waiter.wait()
        raise ResumeExpired("resume window expired")
