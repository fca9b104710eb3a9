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

Every message to a dashboard fits the manager's ``max_message_size``, whatever the visitors
do: the chat's users choose names, groups, and how many tabs they open, so a snapshot that
listed everything would grow with them until the manager refused it. A row lists its first
``GROUPS_SHOWN`` groups and how many more there are, a reason is cut to ``REASON_SHOWN``
characters, and the rows and changes go in while they fit a byte budget (``_Room``); the
snapshot says how many were left out (``hidden``, ``skipped``). And a push that fails all the
same is logged and counted (``push_failures``), and the next one is tried: the demo outlives
its dashboards.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import anyio

from .._runtime.connection import Connection
from ..fsm.machine import StateChange
from ..fsm.states import ConnectionState
from ..testing import MemoryTransport
from ._policies import ADMINS, RESERVED, describe

if TYPE_CHECKING:
    from .._manager import ConnectionManager

__all__ = ["Board"]

logger = logging.getLogger("wsfleet.demo")

PUSH_INTERVAL: Final = 0.25
REFRESH_INTERVAL: Final = 1.0
#: How long a connection that is gone stays on the dashboard, and how many such rows.
GONE_FOR: Final = 60.0
GONE_KEPT: Final = 40
MAX_ROWS: Final = 150
FEED_KEPT: Final = 100
TRAIL: Final = 6
#: How many of its groups a row lists (``more_groups`` counts the others).
GROUPS_SHOWN: Final = 5
#: How many characters of a reason (a peer's close reason, an error's text) are shown.
REASON_SHOWN: Final = 120
#: State changes kept between two snapshots; past that, a burst's oldest are only counted.
UNSENT_KEPT: Final = 1000
#: What a snapshot keeps, of the message size limit, for all but its rows and changes
#: (counts, states, drops by reason, names): each of those is bounded by the code.
FIXED_ROOM: Final = 8 * 1024

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


class _Room:
    """Room left in one message, in bytes of JSON, for a bounded number of items."""

    def __init__(self, size: int, items: int | None = None) -> None:
        self.left = size
        self.items = items
        #: How many items were offered and did not fit.
        self.hidden = 0

    def take(self, items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The leading ``items`` that fit; the others are counted in ``hidden``."""
        taken: list[dict[str, Any]] = []
        offered = iter(items)
        for item in offered:
            size = len(json.dumps(item)) + 2  # ASCII (json escapes the rest), and ", "
            if size > self.left or self.items == 0:
                self.hidden += 1 + sum(1 for _ in offered)
                break
            self.left -= size
            if self.items is not None:
                self.items -= 1
            taken.append(item)
        return taken

    def take_latest(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The trailing ``items`` that fit, in their order."""
        return self.take(reversed(items))[::-1]


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= REASON_SHOWN:
        return text
    return text[: REASON_SHOWN - 1] + "\u2026"


class Board:
    """The dashboards' view of the fleet; ``changed`` is its ``on_state_change`` callback."""

    def __init__(self, manager: ConnectionManager, backend: str) -> None:
        self.manager = manager
        self.backend = backend
        #: The largest message the manager sends: every snapshot and hello stays within it.
        self.limit = manager.overflow.max_message_size
        #: Pushes that failed (logged, and the next one tried).
        self.push_failures = 0
        self._failures_logged: set[str] = set()
        self._serial = itertools.count(1)
        self._events = itertools.count(1)
        self._tracked: dict[Connection, _Tracked] = {}
        self._by_key: dict[str, Connection] = {}
        self._gone: dict[str, tuple[float, dict[str, Any]]] = {}
        self._last_rows: dict[str, dict[str, Any]] = {}
        #: Changes already pushed (a new dashboard's feed starts with them), and those not yet.
        self._feed: deque[dict[str, Any]] = deque(maxlen=FEED_KEPT)
        self._unsent: deque[dict[str, Any]] = deque(maxlen=UNSENT_KEPT)
        #: Changes left out of the snapshots since the last one that went out.
        self._skipped = 0
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
        if len(self._unsent) == UNSENT_KEPT:
            self._skipped += 1  # the oldest goes out of the deque
        self._unsent.append(
            {
                "n": next(self._events),
                "at": change.at.timestamp(),
                "key": tracked.key,
                "identifier": conn.identifier,
                "old": None if change.old is None else change.old.name,
                "new": change.new.name,
                "reason": _clip(change.reason),
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
                reason=_clip(reason),
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
        groups = self.manager.groups_of(conn.identifier)
        return {
            "key": tracked.key,
            "identifier": conn.identifier,
            "kind": kind,
            "state": conn.state.name,
            "since": conn.state_since.timestamp(),
            "groups": heapq.nsmallest(GROUPS_SHOWN, groups),
            "more_groups": max(0, len(groups) - GROUPS_SHOWN),
            "queued": conn.queued,
            "reason": _clip(conn.reason),
            "trail": list(tracked.trail),
        }

    def _rows(self, room: _Room) -> list[dict[str, Any]]:
        """The fleet's live rows, then the rows of connections gone, then the dashboards'.

        As many as fit in ``room``: the fleet's live rows first, then the dashboards', then
        the latest of the gone ones.
        """
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
        self._last_rows = {row["key"]: row for _, _, row in live}
        fleet = room.take(row for watcher, _, row in live if not watcher)
        watching = room.take(row for watcher, _, row in live if watcher)
        return fleet + room.take_latest(self._gone_rows()) + watching

    def _gone_rows(self) -> list[dict[str, Any]]:
        """The rows of the connections gone lately, the oldest first."""
        expired = time.monotonic() - GONE_FOR
        for key in [key for key, (at, _) in self._gone.items() if at < expired]:
            del self._gone[key]
        while len(self._gone) > GONE_KEPT:
            del self._gone[next(iter(self._gone))]
        return [row for _, row in self._gone.values()]

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
        changes = _Room(self.limit // 4)
        events = changes.take_latest(list(self._unsent))
        self._unsent.clear()
        skipped, self._skipped = self._skipped + changes.hidden, 0
        self._feed.extend(events)
        room = _Room(self.limit - FIXED_ROOM - (self.limit // 4 - changes.left), MAX_ROWS)
        rows = self._rows(room)
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
            "hidden": room.hidden,
            "states": states,
            "dashboards": len(watching),
            "gone": sum(1 for _, row in self._gone.values() if row["kind"] != "dashboard"),
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
                "dashboard_push_failures": self.push_failures,
            },
            "events": events,
            "skipped": skipped,
        }

    def hello(self) -> dict[str, Any]:
        """A new dashboard's first message: the feed so far and the policies in words.

        Build it just before the dashboard joins ``admins``: the changes not yet pushed are
        then in its first snapshot, and not twice.
        """
        feed = _Room(self.limit // 2).take_latest(list(self._feed))
        return {"type": "hello", "feed": feed, "policies": describe()}

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

    def _failed(self, exc: Exception) -> None:
        """Count a push that failed; log the first of each kind with its traceback."""
        self.push_failures += 1
        kind = type(exc).__name__
        if kind in self._failures_logged:
            logger.debug("a dashboard snapshot failed again: %s", exc)
            return
        self._failures_logged.add(kind)
        logger.error(
            "a dashboard snapshot failed (%d so far; further %s failures are logged at DEBUG)",
            self.push_failures,
            kind,
            exc_info=exc,
        )

    async def run(self) -> None:
        """The pusher task: a snapshot when something changed, at most every PUSH_INTERVAL.

        A push that fails is counted and the next one tried: the demo's task group, which
        this task belongs to, must not end because of what a dashboard was to be shown.
        """
        self._dirty = anyio.Event()
        while True:
            with anyio.move_on_after(REFRESH_INTERVAL):
                await self._dirty.wait()
            self._dirty = anyio.Event()  # what changes from here on makes the next snapshot
            try:
                await self.push()
            except Exception as exc:
                self._failed(exc)
            await anyio.sleep(PUSH_INTERVAL)
