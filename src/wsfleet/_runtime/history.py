"""Groups that keep history: numbering their messages, delivering them in order, and
recovering a socket that missed some of them.

Every message of such a group reaches this node's sockets through one function,
``_deliver``, in offset order, whether it was sent here (the embedded history appends and
delivers it in one step, with no other task in between) or arrived from a shared store
(``HistoryStore``: every node, the sender included, delivers what the store announces,
in the store's order, and fills from the store a gap it finds in the offsets: messages
announced while its subscription was down). That one place also notes, per
socket, the first offset it was sent live, and holds back the live messages of a socket
being recovered, so ``recover`` can send it exactly what it missed, then what came since:

1. from now on, the socket's live messages of the group wait in its recovery buffer;
2. read the history after ``since`` (at once in memory; a round trip to a store);
3. ``plan_recovery`` says which offsets the socket needs, or why it cannot have them;
4. queue those, then the buffer, in order, skipping any offset queued already; later
   live messages it was replayed already are skipped too.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Protocol

import anyio
import anyio.abc

from ..errors import InvalidArgument, RecoveryImpossible, WrongType
from ..policies.history import HistoryPolicy, Position, plan_recovery
from ..transport import Message, message_size
from .connection import Connection
from .registry import Registry, check_name
from .rings import Rings
from .routing import targets

__all__ = ["Arrived", "Frame", "History", "HistoryStore"]

logger = logging.getLogger("wsfleet")

#: ``frame(message, position) -> str | bytes``: what a socket is sent for a kept message.
Frame = Callable[[Message, Position], Message]
#: How a store hands this node a message, and waits while it is delivered:
#: ``await arrived(group, epoch, offset, message, skip, origin)`` (``skip``: identifiers the
#: sender excluded; ``origin``: the sender's token, which tells a node its own messages).
Arrived = Callable[[str, str, int, Message, Collection[str], str | None], Awaitable[None]]
Deliver = Callable[[Iterable[Connection], Message, int], int]

#: The largest position a frame is measured with before the message is kept (its real
#: position is not known yet): a message that fits then fits once framed for real.
_WIDEST = Position("f" * 16, 2**63 - 1)


class HistoryStore(Protocol):
    """Where a fleet's nodes keep the history of their groups (``RedisHistory``).

    ``append`` keeps a message and announces it to every node in one operation, and
    returns its position; ``run`` hears those announcements (in the order the store kept
    the messages) and calls ``arrived`` for each; ``read`` returns the group's epoch
    (``None``: no history) and its kept messages after ``after``, as ``(offset,
    message)``. ``origin`` comes back with the announcement, so the sender knows it.
    """

    async def append(
        self,
        group: str,
        message: Message,
        policy: HistoryPolicy,
        skip: Collection[str],
        origin: str,
    ) -> Position: ...

    async def read(
        self, group: str, after: int, policy: HistoryPolicy
    ) -> tuple[str | None, list[tuple[int, Message]]]: ...

    async def run(
        self, arrived: Arrived, *, task_status: anyio.abc.TaskStatus[None] = ...
    ) -> None: ...


class _Live:
    """What this node delivered of one group: its epoch, its newest offset, and per socket
    the first offset sent live, the messages held back for a recovery, and the offset up
    to which a recovery already sent it messages."""

    __slots__ = ("epoch", "first", "floor", "newest", "recovering")

    def __init__(self, epoch: str | None) -> None:
        self.epoch = epoch
        self.newest = 0
        self.first: dict[Connection, int] = {}
        self.recovering: dict[Connection, list[tuple[str, int, Message]]] = {}
        self.floor: dict[Connection, int] = {}


class _Pending:
    __slots__ = ("count", "done", "skip")

    def __init__(self, skip: Collection[int]) -> None:
        self.skip = skip
        self.count = 0
        self.done = anyio.Event()


class History:
    """The history-keeping groups of one node; see the module docstring."""

    def __init__(
        self,
        registry: Registry,
        deliver: Deliver,
        check: Callable[[Message], int],
        clock: Callable[[], float],
        *,
        default: HistoryPolicy | None,
        frame: Frame | None,
        store: HistoryStore | None,
        wait: float = 2.0,
    ) -> None:
        self.registry = registry
        self.deliver = deliver
        self.check = check
        self.clock = clock
        self.default = default
        self.frame = frame
        self.store = store
        if frame is not None and not callable(frame):
            raise WrongType(f"frame must be callable (or None), got {frame!r}")
        if store is not None and not callable(getattr(store, "read", None)):
            raise WrongType(f"history_store must be a HistoryStore (or None), got {store!r}")
        #: How long a send waits for the store to announce its message back here.
        self.wait = wait
        self.policies: dict[str, HistoryPolicy | None] = {}
        self.rings = Rings()
        self.live: dict[str, _Live] = {}
        self._pending: dict[str, _Pending] = {}
        self._serial = 0
        #: Messages replayed by recoveries, recoveries refused, messages this node missed
        #: live and delivered late from the store, and those the store no longer held.
        self.replayed = 0
        self.refused = 0
        self.filled = 0
        self.lost = 0
        #: Announcements dropped: not well formed, or of an offset the store does not hold.
        self.malformed = 0

    # -- which groups keep history -------------------------------------------------------

    def keep(self, group: str, policy: HistoryPolicy | None) -> None:
        self.policies[group] = policy

    def policy_for(self, group: str) -> HistoryPolicy | None:
        return self.policies.get(group, self.default)

    # -- sending ---------------------------------------------------------------------------

    def measure(self, message: Message) -> None:
        """Refuse (before anything is kept) a message too large once framed."""
        if self.frame is not None:
            self.check(self.frame(message, _WIDEST))

    async def send(
        self,
        group: str,
        message: Message,
        policy: HistoryPolicy,
        skip: Collection[int],
        names: Collection[str],
    ) -> tuple[int, Position, Message | None]:
        """Keep and deliver ``message``: how many sockets here it was for, its position, and
        the message as framed for the other nodes (``None``: the store announced it)."""
        self.measure(message)
        if self.store is None:
            return self.send_here(group, message, policy, skip)
        count, position = await self.send_through(self.store, group, message, policy, skip, names)
        return count, position, None

    def send_here(
        self, group: str, message: Message, policy: HistoryPolicy, skip: Collection[int]
    ) -> tuple[int, Position, Message]:
        """Keep ``message`` in this node's ring and deliver it, in one step; returns what
        it was for, its position, and the message as framed (for the other nodes)."""
        ring = self.rings.append(group, message, policy, self.clock())
        position = Position(ring.epoch, ring.newest)
        count = self._deliver(group, ring.epoch, ring.newest, message, skip)
        framed = message if self.frame is None else self.frame(message, position)
        return count, position, framed

    async def send_through(
        self,
        store: HistoryStore,
        group: str,
        message: Message,
        policy: HistoryPolicy,
        skip: Collection[int],
        names: Collection[str],
    ) -> tuple[int, Position]:
        """Keep ``message`` in the store, which announces it to every node (this one too);
        deliver it here at once if this node has delivered everything before it, else wait,
        bounded, for the announcement to deliver it in order."""
        self._serial += 1
        origin = f"{id(self):x}.{self._serial}"
        pending = self._pending[origin] = _Pending(skip)
        try:
            position = await store.append(group, message, policy, names, origin)
            live = self.live.get(group)
            if (
                not pending.done.is_set()
                and live is not None
                and live.epoch == position.epoch
                and live.newest == position.offset - 1
            ):
                # Everything before it was delivered here: it can go now, in order, without
                # waiting for the store's announcement (which will find it delivered).
                pending.count = self._deliver(group, position.epoch, position.offset, message, skip)
                pending.done.set()
            with anyio.move_on_after(self.wait):
                await pending.done.wait()
        finally:
            del self._pending[origin]
        return pending.count, position

    def arrived(
        self,
        group: str,
        epoch: str,
        offset: int,
        message: Message,
        names: Collection[str],
        origin: str | None,
    ) -> int:
        """A message the store announced: deliver it here unless it was already."""
        pending = None if origin is None else self._pending.get(origin)
        if pending is not None:
            skip: Collection[int] = pending.skip
        elif names:
            skip = {id(c.socket) for name in names for c in self.registry.connections_of(name)}
        else:
            skip = ()
        live = self.live.get(group)
        if live is not None and live.epoch == epoch and offset <= live.newest:
            count = 0  # already delivered here
        else:
            count = self._deliver(group, epoch, offset, message, skip)
        if pending is not None:
            pending.count = count
            pending.done.set()
        return count

    def _deliver(
        self, group: str, epoch: str, offset: int, message: Message, skip: Collection[int]
    ) -> int:
        """The one place a kept message reaches this node's sockets (module docstring)."""
        live = self.live.get(group)
        if live is None or live.epoch != epoch:
            old, live = live, _Live(epoch)  # a new history: old offsets mean nothing
            if old is not None:
                live.recovering = old.recovering
            self.live[group] = live
        live.newest = offset
        framed = message if self.frame is None else self.frame(message, Position(epoch, offset))
        first, recovering, floor = live.first, live.recovering, live.floor
        recipients: list[Connection] = []
        for conn in targets(self.registry, "group", group, skip):
            if recovering and conn in recovering:
                recovering[conn].append((epoch, offset, message))
                continue
            if floor and conn in floor:
                if offset <= floor[conn]:
                    continue  # a recovery sent it this one already
                del floor[conn]
            if conn not in first:
                first[conn] = offset
            recipients.append(conn)
        if len(first) > 2 * len(recipients) + 64:
            live.first = {c: at for c, at in first.items() if c.registered}
        if not recipients:
            return 0
        return self.deliver(recipients, framed, message_size(framed))

    def left(self, conns: Iterable[Connection], group: str) -> None:
        """These sockets no longer get the group: what they were sent live no longer says
        they have everything since."""
        live = self.live.get(group)
        if live is not None:
            for conn in conns:
                live.first.pop(conn, None)
                live.floor.pop(conn, None)

    # -- recovering ------------------------------------------------------------------------

    async def recover(self, conn: Connection, group: str, since: Position | str) -> int:
        """Send ``conn`` what it missed of ``group`` after ``since``, then the live ones;
        returns how many it was replayed (``RecoveryImpossible``: none)."""
        policy = self.policy_for(group)
        if policy is None:
            raise InvalidArgument(f"group {group!r} keeps no history (see keep_history)")
        if not isinstance(since, Position):
            try:
                since = Position.parse(since)
            except InvalidArgument as exc:
                # What a client sent back: refused as its recovery, not as the server's bug.
                raise RecoveryImpossible(f"not a position: {exc}") from None
        if group not in self.registry.memberships.get(conn.identifier, ()):
            # A client names the group it recovers: without this, any socket could read any
            # group's history. (Joining first is also what makes the live ones follow.)
            raise RecoveryImpossible(f"the socket is not in {group!r}")
        live = self.live.get(group)
        if live is None:
            live = self.live[group] = _Live(None)
        if conn in live.recovering:
            raise InvalidArgument("this socket is already being recovered for this group")
        sent_from = live.first.get(conn)
        live.recovering[conn] = []
        try:
            epoch, kept = await self._read(group, since.offset, policy)
        except Exception as exc:  # the store failed, or holds what it should not
            logger.warning("history of %r: reading it to recover failed: %r", group, exc)
            self.refused += 1
            raise RecoveryImpossible("the history cannot be read now") from None
        finally:
            live = self.live[group]  # a new epoch may have replaced it meanwhile
            held = live.recovering.pop(conn)
        if live.epoch != epoch:
            sent_from = None
        entries = dict(kept)
        entries.update((at, message) for ep, at, message in held if ep == epoch)
        newest = max((live.newest if live.epoch == epoch else 0), max(entries, default=0))
        replay = [(at, entries[at]) for at in sorted(entries) if at > since.offset]
        try:
            plan = plan_recovery(
                since,
                epoch=epoch,
                oldest=replay[0][0] if replay else None,
                newest=newest,
                live_from=sent_from,
            )
            if [at for at, _ in replay if at in plan] != list(plan):
                raise RecoveryImpossible(f"the history has gaps after offset {since.offset}")
        except RecoveryImpossible:
            self.refused += 1
            self._send(conn, live, held)  # live messages: they go on as if nothing happened
            raise
        assert epoch is not None
        out = [(epoch, at, message) for at, message in replay if at in plan]
        out += [(ep, at, m) for ep, at, m in held if ep != epoch or at > newest]
        if sent_from is not None:  # it was live all along: the held ones are all it needs
            out = [(ep, at, m) for ep, at, m in held if ep != epoch or at > since.offset]
        self._send(conn, live, out)
        if plan and plan[-1] > live.newest:  # replayed ahead of this node: skip them live
            live.floor[conn] = plan[-1]
        self.replayed += len(plan)
        return len(plan)

    async def _read(
        self, group: str, after: int, policy: HistoryPolicy
    ) -> tuple[str | None, list[tuple[int, Message]]]:
        if self.store is not None:
            return await self.store.read(group, after, policy)
        ring = self.rings.read(group, self.clock())
        if ring is None:
            return None, []
        return ring.epoch, ring.after(after)

    def _send(self, conn: Connection, live: _Live, entries: list[tuple[str, int, Message]]) -> None:
        frame = self.frame
        for epoch, offset, message in entries:
            if not conn.registered:
                return
            if epoch == live.epoch:
                live.first.setdefault(conn, offset)
            framed = message if frame is None else frame(message, Position(epoch, offset))
            self.deliver((conn,), framed, message_size(framed))

    # -- the store's announcements ---------------------------------------------------------

    async def listen(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Hear the store's announcements for as long as the manager runs."""
        assert self.store is not None
        await self.store.run(self._heard, task_status=task_status)

    async def _heard(
        self,
        group: str,
        epoch: str,
        offset: int,
        message: Message,
        names: Collection[str],
        origin: str | None,
    ) -> None:
        """An announcement; one that comes after a gap (this node's subscription was down
        while others were announced) first has the gap filled from the store, in order.

        Whoever can publish on the store's channel can announce anything: an announcement
        that is not well formed, or that claims an offset the store does not hold, is
        dropped and counted (``malformed``), and reaches no socket."""
        try:
            check_name("group", group)
            Position(epoch, offset)
            if offset < 1 or not isinstance(message, str | bytes):
                raise InvalidArgument("no message at a positive offset")
            if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
                raise InvalidArgument("names to skip are not a list of str")
            if origin is not None and not isinstance(origin, str):
                raise InvalidArgument("origin is not a str")
        except (InvalidArgument, WrongType) as exc:
            self._malformed(group, exc)
            return
        live = self.live.get(group)
        policy = self.policy_for(group)
        if (
            live is not None
            and live.epoch == epoch
            and live.newest
            and offset > live.newest + 1
            and policy is not None
            and self.store is not None
            and not await self._fill(self.store, group, epoch, live.newest, offset, policy)
        ):
            self._malformed(group, f"offset {offset} is not in the store")
            return
        self.arrived(group, epoch, offset, message, names, origin)

    def _malformed(self, group: object, why: object) -> None:
        self.malformed += 1
        logger.warning("history of %r: an announcement was dropped: %s", group, why)

    async def _fill(
        self,
        store: HistoryStore,
        group: str,
        epoch: str,
        after: int,
        until: int,
        policy: HistoryPolicy,
    ) -> bool:
        """Deliver offsets ``after + 1 .. until - 1`` from the store; what it no longer
        holds is counted and logged as lost. ``False`` if the store does not hold ``until``
        itself (an announcement of an offset nobody appended: forged), with nothing done."""
        try:
            current, kept = await store.read(group, after, policy)
        except Exception as exc:  # the store failed: what it holds cannot be had now
            logger.warning("history of %r: filling a gap failed: %r", group, exc)
            current, kept = None, []
        if current == epoch and not any(offset == until for offset, _ in kept):
            return False
        filled = 0
        if current == epoch:
            for offset, message in kept:
                if after < offset < until:
                    filled += 1
                    self.filled += 1
                    self.arrived(group, epoch, offset, message, (), None)
        missing = until - after - 1 - filled
        if missing:
            self.lost += missing
            logger.warning(
                "history of %r: %d message(s) this node never heard are gone from the store",
                group,
                missing,
            )
        return True

    def counts(self) -> Mapping[str, int]:
        return {
            "replayed": self.replayed,
            "refused": self.refused,
            "filled": self.filled,
            "lost": self.lost,
            "malformed": self.malformed,
        }
