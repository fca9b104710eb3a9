"""What the dashboards show, gathered from the manager and pushed to them in batches.

Why batches: state changes come in bursts ("kill everything" makes one per connection), and
a dashboard sent one message per change would become the slow consumer of its own demo. So
changes are collected as they happen (``on_state_change``), and one snapshot goes to the
dashboards at most every ``PUSH_INTERVAL``, and at least every ``REFRESH_INTERVAL`` so that
queue depths move while no state changes.

The rows are read from the manager's public API at push time (states, ``state_since``,
``queued``, ``groups_of``, ``stats()``). The board keeps only what the manager forgets on
purpose: a short key per connection for the buttons, the trail of its recent states, and the
rows of connections that are gone, shown DISCONNECTED for a while.

The dashboards are the members of the ``admins`` group; a snapshot describes this node, so
it goes to this node's admin sockets only, not through the backplane. A dashboard is not
part of the fleet it watches: the counts it shows (states, connections, identifiers,
groups) leave the dashboards out and say how many are watching; their rows come last.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Final

import anyio

from .._connection import Connection
from ..fsm.machine import StateChange
from ..fsm.states import ConnectionState
from ..testing import MemoryTransport
from ._policies import ADMINS, RESERVED, describe

if TYPE_CHECKING:
    from .._manager import ConnectionManager

__all__ = ["Board"]

PUSH_INTERVAL: Final = 0.25
REFRESH_INTERVAL: Final = 1.0
#: How long a connection that is gone stays on the dashboard, and how many such rows.
GONE_FOR: Final = 60.0
GONE_KEPT: Final = 40
MAX_ROWS: Final = 150
FEED_KEPT: Final = 100
TRAIL: Final = 6

C = ConnectionState.CONNECTED
E = ConnectionState.ERROR
D = ConnectionState.DISCONNECTED


class _Tracked:
    """What the board remembers about one live connection; the trail comes from its changes.

    ``failure`` is why it last went to ERROR: a connection that ends from there ends for
    two reasons, what went wrong and why it was not retried, and its row shows both.
    """

    __slots__ = ("failure", "key", "trail")

    def __init__(self, key: str) -> None:
        self.key = key
        self.trail: deque[str] = deque(maxlen=TRAIL)
        self.failure: str | None = None


class Board:
    """The dashboards' view of the fleet; ``changed`` is its ``on_state_change`` callback."""

    def __init__(self, manager: ConnectionManager, backend: str) -> None:
        self.manager = manager
        self.backend = backend
        self._serial = itertools.count(1)
        self._events = itertools.count(1)
        self._tracked: dict[Connection, _Tracked] = {}
        self._by_key: dict[str, Connection] = {}
        self._gone: dict[str, tuple[float, dict[str, Any]]] = {}
        self._last_rows: dict[str, dict[str, Any]] = {}
        #: Changes already pushed (a new dashboard's feed starts with them), and those not yet.
        self._feed: deque[dict[str, Any]] = deque(maxlen=FEED_KEPT)
        self._unsent: list[dict[str, Any]] = []
        self._dirty: anyio.Event | None = None

    # -- bookkeeping -------------------------------------------------------------------------

    def _track(self, conn: Connection) -> _Tracked:
        tracked = self._tracked.get(conn)
        if tracked is None:
            tracked = _Tracked(f"c{next(self._serial)}")
            self._tracked[conn] = tracked
            self._by_key[tracked.key] = conn
        return tracked

    def find(self, key: object) -> Connection | None:
        """The live connection a dashboard button names."""
        return self._by_key.get(key) if isinstance(key, str) else None

    def changed(self, change: StateChange) -> None:
        """Record one state change (the manager calls this after every change)."""
        conn = change.connection
        assert isinstance(conn, Connection)
        tracked = self._track(conn)
        if not tracked.trail and change.old is not None:
            tracked.trail.append(change.old.name)
        tracked.trail.append(change.new.name)
        if change.new is E:
            tracked.failure = change.reason
        elif change.new is C:
            tracked.failure = None
        self._unsent.append(
            {
                "n": next(self._events),
                "at": change.at.timestamp(),
                "key": tracked.key,
                "identifier": conn.identifier,
                "old": None if change.old is None else change.old.name,
                "new": change.new.name,
                "reason": change.reason,
            }
        )
        if change.new is D:
            # The manager forgets a connection once it is DISCONNECTED; the board shows it
            # a little longer, as it was last seen.
            row = dict(self._last_rows.get(tracked.key) or self._row(conn, tracked))
            reason = change.reason
            if tracked.failure and reason and tracked.failure != reason:
                reason = f"{tracked.failure} / {reason}"  # "slow consumer / no retry policy"
            row.update(
                state=D.name,
                since=change.at.timestamp(),
                queued=0,
                reason=reason,
                trail=list(tracked.trail),
            )
            self._gone[tracked.key] = (time.monotonic(), row)
            del self._tracked[conn]
            del self._by_key[tracked.key]
        self.poke()

    def poke(self) -> None:
        """Ask for a snapshot soon (batched with whatever else happens meanwhile)."""
        if self._dirty is not None:
            self._dirty.set()

    # -- what a dashboard receives -------------------------------------------------------------

    def _row(self, conn: Connection, tracked: _Tracked) -> dict[str, Any]:
        if isinstance(conn.socket, MemoryTransport):
            kind = "simulated"
        elif conn.identifier in RESERVED:
            kind = "dashboard"
        else:
            kind = "browser"
        return {
            "key": tracked.key,
            "identifier": conn.identifier,
            "kind": kind,
            "state": conn.state.name,
            "since": conn.state_since.timestamp(),
            "groups": sorted(self.manager.groups_of(conn.identifier)),
            "queued": conn.queued,
            "reason": conn.reason,
            "trail": list(tracked.trail),
        }

    def _rows(self) -> list[dict[str, Any]]:
        """The fleet's live rows, then the rows of connections gone, then the dashboards'."""
        manager = self.manager
        live: list[tuple[bool, int, dict[str, Any]]] = []
        for state in ConnectionState:
            if state is D:
                continue  # on its way out: shown from the gone rows
            for socket in manager.connections_in_state(state):
                conn = manager.connection(socket)
                tracked = self._track(conn)
                row = self._row(conn, tracked)
                live.append((row["kind"] == "dashboard", int(tracked.key[1:]), row))
        live.sort(key=lambda item: item[:2])
        rows = [row for _, _, row in live[:MAX_ROWS]]
        self._last_rows = {row["key"]: row for row in rows}
        fleet = [row for row in rows if row["kind"] != "dashboard"]
        watching = rows[len(fleet) :]
        expired = time.monotonic() - GONE_FOR
        for key in [key for key, (at, _) in self._gone.items() if at < expired]:
            del self._gone[key]
        while len(self._gone) > GONE_KEPT:
            del self._gone[next(iter(self._gone))]
        gone = [row for _, row in self._gone.values()]
        room = max(0, MAX_ROWS - len(rows))
        return fleet + (gone[len(gone) - room :] if room else []) + watching  # latest gone

    def _watching(self) -> list[Connection]:
        """This node's dashboard connections, in whatever state."""
        manager = self.manager
        return [
            manager.connection(socket) for name in RESERVED for socket in manager.sockets_of(name)
        ]

    def snapshot(self) -> dict[str, Any]:
        """Everything a dashboard shows, and the changes since the last snapshot.

        The counts are the manager's less the dashboards' own connections (and their
        identifier and group), which ``dashboards`` counts apart.
        """
        manager = self.manager
        stats = manager.stats()
        events, self._unsent = self._unsent, []
        self._feed.extend(events)
        rows = self._rows()
        watching = self._watching()
        states = dict(stats.states)
        for conn in watching:
            states[conn.state.name] -= 1
        return {
            "type": "snapshot",
            "now": time.time(),
            "backend": self.backend,
            "node": stats.node_id,
            "backplane": stats.backplane_state,
            "rows": rows,
            "states": states,
            "dashboards": len(watching),
            "gone": sum(1 for row in rows if row["state"] == D.name and row["kind"] != "dashboard"),
            "drops": dict(stats.drops),
            "stats": {
                "connections": stats.connections - len(watching),
                "identifiers": stats.identifiers
                - sum(1 for name in RESERVED if manager.sockets_of(name)),
                "groups": stats.groups - int(ADMINS in manager.groups()),
                "queued_messages": stats.queued_messages,
                "sent_messages": stats.sent_messages,
                "pings_sent": stats.pings_sent,
                "heartbeat_timeouts": stats.heartbeat_timeouts,
                "callback_errors": stats.callback_errors,
            },
            "events": events,
        }

    def hello(self) -> dict[str, Any]:
        """A new dashboard's first message: the feed so far and the policies in words.

        Build it just before the dashboard joins ``admins``: the changes not yet pushed are
        then in its first snapshot, and not twice.
        """
        return {"type": "hello", "feed": list(self._feed), "policies": describe()}

    # -- pushing ---------------------------------------------------------------------------------

    def _dashboards(self) -> list[Connection]:
        manager = self.manager
        return [
            manager.connection(socket)
            for identifier in manager.get_group_members(ADMINS)
            for socket in manager.sockets_of(identifier)  # this node's sockets only
        ]

    async def push(self) -> None:
        """Send one snapshot to every dashboard on this node."""
        message = json.dumps(self.snapshot())
        for conn in self._dashboards():
            await conn.send(message)

    async def run(self) -> None:
        """The pusher task: a snapshot when something changed, at most every PUSH_INTERVAL."""
        self._dirty = anyio.Event()
        while True:
            with anyio.move_on_after(REFRESH_INTERVAL):
                await self._dirty.wait()
            self._dirty = anyio.Event()  # what changes from here on makes the next snapshot
            await self.push()
            await anyio.sleep(PUSH_INTERVAL)
