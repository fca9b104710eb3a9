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

This part keeps the tokens and the holds' waiting; it decides (which held session a token
names, how long a hold lasts) and its owner acts (state changes, the new socket).
"""

from __future__ import annotations

import secrets
from typing import Final

import anyio

from ..errors import ResumeExpired
from ..fsm.machine import FleetMachine
from ..fsm.states import HELD
from ..policies.retry import RetryPolicy
from ..transport import Transport
from .connection import Connection, Holding
from .context import Context

__all__ = ["HOLD_ONLY", "Resumption"]

#: The policy of a connection held only because the manager has a ``resume_window``.
HOLD_ONLY: Final = RetryPolicy(max_attempts=1, base_delay=0.0, max_delay=0.0, jitter=0.0)


class Resumption:
    def __init__(
        self, context: Context, machine: FleetMachine, resume_window: float | None
    ) -> None:
        self._context = context
        self._machine = machine
        self.resume_window = resume_window
        self._tokens: dict[str, Connection] = {}
        self._resumes: dict[Connection, anyio.Event] = {}

    def registered(self, conn: Connection) -> None:
        """Give a new server-side connection its resume token, if it can be held."""
        machine = self._machine
        if self.resume_window is not None and machine.policy_of(conn) is None:
            # A resume window alone makes sessions resumable: one "attempt", the hold.
            conn.retry_policy = HOLD_ONLY
        if machine.policy_of(conn) is not None:
            self.issue(conn)

    def issue(self, conn: Connection) -> None:
        """A fresh token for ``conn``; the one it had names nothing from now on."""
        hold = conn._hold
        if hold is None:
            hold = conn._hold = Holding()
        elif hold.token is not None:
            self._tokens.pop(hold.token, None)
        hold.token = secrets.token_urlsafe(18)
        self._tokens[hold.token] = conn

    def forget(self, conn: Connection) -> None:
        """``conn`` was unregistered: its token is void and its hold ends."""
        hold = conn._hold
        if hold is not None and hold.token is not None:
            self._tokens.pop(hold.token, None)
        resumed = self._resumes.pop(conn, None)
        if resumed is not None:
            resumed.set()  # wakes the waiting attempt, which now finds nothing to resume

    def find(self, identifier: str, token: str) -> Connection | None:
        """The held session ``token`` names, if it is ``identifier``'s; ``None`` otherwise."""
        conn = self._tokens.get(token)
        if conn is None or conn.identifier != identifier or conn.state not in HELD:
            return None
        hold = conn._hold
        if hold is None or not secrets.compare_digest(token, hold.token or ""):
            return None
        return conn

    def resumed(self, conn: Connection) -> None:
        """A new socket took ``conn`` over: its waiting attempt ends, its token is spent."""
        waiter = self._resumes.pop(conn, None)
        if waiter is not None:
            waiter.set()
        self.issue(conn)  # one use per token (see the module docstring)

    def window_of(self, conn: Connection) -> float:
        """How long a held session waits: the manager's window, or its policy's whole schedule."""
        if self.resume_window is not None:
            return self.resume_window
        policy = self._machine.policy_of(conn)
        return 0.0 if policy is None else policy.max_total_delay()

    async def wait_for_resume(self, conn: Connection) -> Transport:
        """A held session's "attempt": wait for the client to come back within the window."""
        started = conn.outage_started if conn.outage_started is not None else conn.changed_at
        remaining = started + self.window_of(conn) - self._context.now()
        waiter = self._resumes.setdefault(conn, anyio.Event())
        with anyio.move_on_after(max(0.0, remaining)):
            await waiter.wait()
        raise ResumeExpired("resume window expired")
