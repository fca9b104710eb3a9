"""Every cross-node send a node accepted is delivered or counted, once: the faults one by one.

A real Redis produces these faults only by chance and at its own moment (see
``tests/backplane/redis/test_accounting.py``); here a ``Faulty`` store between one node and
an ``InMemoryHub`` produces each on purpose: a publish that reached everyone but whose answer
was lost, messages that never reached a subscriber whose link stayed up, a node that was away
while another sent. The sum checked each time is the contract: what node a accepted
(``published`` true) equals what b delivered plus what a and b count as dropped.
"""

from __future__ import annotations

import pickle
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest

from support import backplane_drops, backplane_stat, connected, wait_until
from wsfleet import (
    Backplane,
    ConnectionManager,
    InMemoryHub,
    InvalidArgument,
    MessageTooLarge,
    RetryPolicy,
)
from wsfleet.backplane import Store, StoreSession
from wsfleet.backplane.accounting import Receipts, SendNumbers
from wsfleet.backplane.wire import ENVELOPE_ROOM, Header
from wsfleet.testing import MemoryTransport

pytestmark = pytest.mark.anyio

HEARTBEAT = 0.05
TTL = 0.2
FAST = RetryPolicy(max_attempts=1_000_000_000, base_delay=0.01, max_delay=0.05, jitter=0)


class Faulty(Store):
    """One node's way to a shared store, with faults a test asks for.

    ``lose_answers``: the next publishes reach the store, then raise, as when the connection
    dies with the answer on its way. ``swallow``: the next messages for this node vanish on
    their way in, its link none the wiser. ``cut``: everything fails.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lose_answers = 0
        self.swallow = 0
        self.cut = False
        #: The backplane of the node this store serves.
        self.backplane: Backplane | None = None

    def check(self) -> None:
        if self.cut:
            raise ConnectionError("cut off")

    @asynccontextmanager
    async def session(self) -> AsyncIterator[StoreSession]:
        self.check()
        async with self.store.session() as session:
            yield _FaultySession(self, session)


class _FaultySession(StoreSession):
    def __init__(self, faulty: Faulty, session: StoreSession) -> None:
        self.faulty = faulty
        self.session = session

    async def publish(self, data: bytes) -> int | None:
        self.faulty.check()
        receivers = await self.session.publish(data)
        if self.faulty.lose_answers:
            self.faulty.lose_answers -= 1
            raise ConnectionError("connection lost before the answer")
        return receivers

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[bytes]]:
        self.faulty.check()
        async with self.session.subscribe() as messages:
            mine = self._messages(messages)
            try:
                yield mine
            finally:
                await mine.aclose()

    async def _messages(self, messages: AsyncIterator[bytes]) -> AsyncGenerator[bytes]:
        async for data in messages:
            self.faulty.check()
            if self.faulty.swallow and b'"k":"send"' in data:
                self.faulty.swallow -= 1
                continue
            yield data

    async def put_member(self, node: str, identifier: str, groups: list[str]) -> None:
        self.faulty.check()
        await self.session.put_member(node, identifier, groups)

    async def del_member(self, node: str, identifier: str) -> None:
        self.faulty.check()
        await self.session.del_member(node, identifier)

    async def replace_node(self, node: str, snapshot: Mapping[str, list[str]], ttl: float) -> None:
        self.faulty.check()
        await self.session.replace_node(node, snapshot, ttl)

    async def beat(self, node: str, ttl: float) -> None:
        self.faulty.check()
        await self.session.beat(node, ttl)

    async def live_nodes(self) -> set[str]:
        self.faulty.check()
        return await self.session.live_nodes()

    async def load(self, node: str) -> dict[str, list[str]]:
        self.faulty.check()
        return await self.session.load(node)

    async def forget(self, node: str) -> None:
        self.faulty.check()
        await self.session.forget(node)


@asynccontextmanager
async def pair(
    **options: Any,
) -> AsyncIterator[tuple[ConnectionManager, Faulty, ConnectionManager, Faulty, MemoryTransport]]:
    """Nodes a and b on one hub, each through its own ``Faulty``; bob's socket on b."""
    hub = InMemoryHub()
    settings = {"heartbeat_interval": HEARTBEAT, "node_ttl": TTL, "retry_policy": FAST, **options}
    async with AsyncExitStack() as stack:
        faults, managers = [], []
        for name in ("a", "b"):
            faulty = Faulty(hub)
            backplane = faulty.backplane = Backplane(faulty, node_id=name, **settings)
            manager = await stack.enter_async_context(ConnectionManager(backplane=backplane))
            faults.append(faulty)
            managers.append(manager)
        a, b = managers
        await wait_until(lambda: connected(a, b), "both connected")
        bob = MemoryTransport("bob")
        b.register(bob, "bob")
        yield a, faults[0], b, faults[1], bob


class Sender:
    """Sends numbered messages from one node, keeping what it accepted and refused."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        self.accepted = 0
        self.refused = 0

    async def send(self, count: int = 1) -> None:
        for _ in range(count):
            number = self.accepted + self.refused + 1
            delivery = await self.manager.broadcast(str(number))
            if delivery.published:
                self.accepted += 1
            else:
                self.refused += 1


def balanced(sender: Sender, b: ConnectionManager, bob: MemoryTransport) -> bool:
    """Every accepted message delivered to bob or counted, by a or by b; and every refused
    one counted by a."""
    a_drops = backplane_drops(sender.manager)
    refused = sum(a_drops.get(f"backplane: {r}", 0) for r in ("link down", "publish queue full"))
    counted = sum(a_drops.values()) - refused + sum(backplane_drops(b).values())
    return refused == sender.refused and sender.accepted == len(bob.received) + counted


# -- the faults --------------------------------------------------------------------------------


async def test_a_publish_whose_answer_was_lost_is_not_counted_twice() -> None:
    """It reached b: nobody may count it as dropped (the sender used to, as 'failed')."""
    async with pair() as (a, fa, b, _, bob):
        sender = Sender(a)
        fa.lose_answers = 1
        await sender.send()
        await wait_until(lambda: bob.received == ["1"], "b delivered it")
        await wait_until(
            lambda: backplane_stat(a, "link error") == 1 and connected(a, b), "a's link came back"
        )
        await sender.send()
        await wait_until(lambda: bob.received == ["1", "2"], "and the next one")
        await anyio.sleep(3 * HEARTBEAT)  # a's tallies come and go
        assert backplane_drops(a) == backplane_drops(b) == {}
        assert balanced(sender, b, bob)


async def test_messages_lost_on_the_way_are_counted_by_the_receiver() -> None:
    """b's link stays up while two messages vanish on their way: the next one shows it."""
    async with pair() as (a, _, b, fb, bob):
        sender = Sender(a)
        await sender.send()
        await wait_until(lambda: bob.received == ["1"], "the first arrived")
        fb.swallow = 2
        await sender.send(3)
        await wait_until(lambda: bob.received == ["1", "4"], "b delivered the others")
        assert backplane_drops(b) == {"backplane: lost in transit": 2}
        assert backplane_drops(a) == {}
        assert balanced(sender, b, bob)
        assert connected(a, b)


async def test_a_lost_last_message_is_counted_after_the_next_heartbeat() -> None:
    """Nothing follows it, so a announces its count (a tally) at its next heartbeat."""
    async with pair() as (a, _, b, fb, bob):
        sender = Sender(a)
        await sender.send(2)
        await wait_until(lambda: len(bob.received) == 2, "the first two arrived")
        fb.swallow = 1
        await sender.send()
        await wait_until(
            lambda: backplane_drops(b) == {"backplane: lost in transit": 1}, "b counted it"
        )
        assert bob.received == ["1", "2"]
        assert balanced(sender, b, bob)


async def test_a_node_that_was_away_learns_what_it_missed_when_it_says_hello() -> None:
    """b was cut off while a sent (a's own tally then reached nobody but a): when b says
    hello, a announces its count again."""
    async with pair() as (a, _, b, fb, bob):
        # Past a's first lease after connecting, when it holds back a message nobody else
        # heard (the others may be resubscribing): here, a publishes at once.
        await anyio.sleep(TTL)
        sender = Sender(a)
        await sender.send()
        await wait_until(lambda: bob.received == ["1"], "the first arrived")
        fb.cut = True
        await wait_until(lambda: not connected(b), "b's link noticed")
        await sender.send(3)  # a's link is up: accepted, published, heard by nobody else
        assert sender.accepted == 4
        await anyio.sleep(3 * HEARTBEAT)  # a's tally went out, while b was away
        assert backplane_drops(b) == {}
        fb.cut = False
        await wait_until(
            lambda: backplane_drops(b) == {"backplane: lost in transit": 3}, "b counted"
        )
        assert bob.received == ["1"]
        await sender.send()
        await wait_until(lambda: bob.received == ["1", "5"], "and b delivers again")
        assert backplane_drops(a) == {}
        assert balanced(sender, b, bob)


async def test_a_node_restarted_under_the_same_id_is_counted_afresh() -> None:
    """A new run starts at 1 again: not a sea of repeats, nor of gaps."""
    hub = InMemoryHub()
    settings: dict[str, Any] = {"heartbeat_interval": HEARTBEAT, "node_ttl": TTL}
    async with ConnectionManager(backplane=Backplane(hub, node_id="b", **settings)) as b:
        bob = MemoryTransport("bob")
        b.register(bob, "bob")
        for run in range(2):
            backplane = Backplane(hub, node_id="a", **settings)
            async with ConnectionManager(backplane=backplane) as a:
                await wait_until(lambda m=a: connected(m), "a connected")
                for i in range(3):
                    assert (await a.broadcast(f"{run}.{i}")).published
                await wait_until(lambda r=run: len(bob.received) == 3 * (r + 1), "delivered")
        assert bob.received == ["0.0", "0.1", "0.2", "1.0", "1.1", "1.2"]
        assert backplane_drops(b) == {}


async def test_a_send_that_cannot_be_encoded_is_counted_by_the_sender() -> None:
    """The manager refuses names with a lone surrogate up front; were one to reach the
    backplane, it is counted where it fails, and the link goes on."""
    async with pair() as (a, fa, b, _, bob):
        with pytest.raises(InvalidArgument, match="valid Unicode"):
            await a.send_to_one("bob\udc80", "hi")
        assert fa.backplane is not None
        assert fa.backplane.send("one", "bob\udc80", "hi", [])  # accepted: built later
        await wait_until(lambda: backplane_drops(a) == {"backplane: unencodable": 1}, "counted")
        await a.broadcast("next")
        await wait_until(lambda: bob.received == ["next"], "the link lives on")
        assert connected(a, b)
        assert backplane_drops(b) == {}


async def test_an_envelope_over_the_bound_when_built_is_counted_by_the_sender() -> None:
    """The message fits, the thousands of targets with it do not."""
    async with pair(max_message_size=ENVELOPE_ROOM + 1000) as (a, _, b, _, bob):
        names = [f"someone-{i:05}" for i in range(1000)]
        assert (await a.send_to_many(names, "hi")).published
        await wait_until(
            lambda: backplane_drops(a) == {"backplane: too large for the backplane": 1}, ""
        )
        await a.broadcast("next")
        await wait_until(lambda: bob.received == ["next"], "the link lives on")
        assert backplane_drops(b) == {}


# -- the bound, before anything is queued --------------------------------------------------


async def test_a_message_over_the_bound_is_refused_before_it_is_queued() -> None:
    async with pair(max_message_size=64 * 1024) as (a, _, b, _, bob):
        alice = MemoryTransport("alice")
        a.register(alice, "alice")
        with pytest.raises(MessageTooLarge) as info:
            await a.broadcast("x" * (64 * 1024))
        text = str(info.value)
        assert "backplane" in text
        assert "max_message_size" in text
        assert info.value.limit == 64 * 1024
        with pytest.raises(MessageTooLarge):
            await a.send_to_one("alice", b"\x00" * (48 * 1024))  # base64: 64 KiB and more
        with pytest.raises(MessageTooLarge):
            await a.send_to_group("room", "\x01" * (11 * 1024))  # JSON: six bytes each
        fits = "y" * (64 * 1024 - ENVELOPE_ROOM)
        assert (await a.broadcast(fits)).published
        await wait_until(lambda: bob.received == [fits], "the largest that fits arrived")
        assert alice.received == [fits]  # none of the refused ones reached even this node
        assert backplane_drops(a) == backplane_drops(b) == {}


def test_check_message_measures_text_as_json_writes_it() -> None:
    backplane = Backplane(InMemoryHub(), max_message_size=ENVELOPE_ROOM + 600)
    backplane.check_message("a" * 600)
    backplane.check_message("\x00" * 100)  # 600 bytes as \\u0000
    backplane.check_message(b"\x00" * 450)  # 600 in base64
    for message in ("a" * 601, "\x00" * 101, b"\x00" * 451):
        with pytest.raises(MessageTooLarge):
            backplane.check_message(message)
    with pytest.raises(MessageTooLarge) as info:
        backplane.check_message("a" * 601)
    copy = pickle.loads(pickle.dumps(info.value))  # its explanation goes with it
    assert (str(copy), copy.size, copy.limit) == (str(info.value), 601 + ENVELOPE_ROOM, 4696)
    assert "backplane" in copy.detail
    with pytest.raises(TypeError):
        backplane.check_message(["not", "a", "message"])


@pytest.mark.parametrize("size", [0, ENVELOPE_ROOM, 1.5, True, "4MiB"], ids=repr)
def test_the_bound_must_leave_room_for_a_message(size: object) -> None:
    with pytest.raises(ValueError, match="max_message_size"):
        Backplane(InMemoryHub(), max_message_size=size)  # type: ignore[arg-type]


# -- the two counts, without I/O ------------------------------------------------------------------


def header(kind: str, seq: int, run: str = "r1", node: str = "a") -> Header:
    return Header(kind, node, run, seq)  # type: ignore[arg-type]


def test_receipts_count_gaps_once_and_refuse_what_they_counted() -> None:
    receipts = Receipts()
    assert receipts.arrived(header("hello", 0), 0.0) == (True, 0)
    assert receipts.arrived(header("send", 1), 0.0) == (True, 0)
    assert receipts.arrived(header("send", 4), 0.0) == (True, 2)  # 2 and 3 missed
    assert receipts.arrived(header("send", 3), 0.0) == (False, 0)  # late: counted already
    assert receipts.arrived(header("send", 4), 0.0) == (False, 0)  # twice
    assert receipts.arrived(header("join", 4), 0.0) == (True, 0)
    assert receipts.arrived(header("tally", 6), 0.0) == (True, 2)  # 5 and 6: the tail
    assert receipts.arrived(header("hello", 6), 0.0) == (True, 0)
    assert receipts.arrived(header("send", 7), 0.0) == (True, 0)


def test_receipts_start_counting_at_the_first_word_of_a_run() -> None:
    receipts = Receipts()
    assert receipts.arrived(header("send", 41), 0.0) == (True, 0)  # before: not ours
    assert receipts.arrived(header("send", 43), 0.0) == (True, 1)
    assert receipts.arrived(header("tally", 9, run="r2"), 0.0) == (True, 0)  # a new run
    assert receipts.arrived(header("send", 10, run="r2"), 0.0) == (True, 0)
    assert receipts.arrived(header("send", 2, node="b"), 0.0) == (True, 0)  # another origin
    assert len(receipts) == 2
    receipts.forget(before=1.0)
    assert len(receipts) == 0


def test_send_numbers_know_what_was_announced_and_what_is_unknown() -> None:
    numbers = SendNumbers("r1")
    assert (numbers.seq(send=True), numbers.seq(send=False)) == (1, 0)
    numbers.sent = 3  # three sends handed to the store
    numbers.published(header("send", 1))
    numbers.published(header("send", 2))
    # The third's publish failed: the second's answer announced only the first.
    assert (numbers.unannounced(), numbers.unknown()) == (2, 1)
    numbers.published(header("tally", 3))
    assert (numbers.unannounced(), numbers.unknown()) == (0, 0)
