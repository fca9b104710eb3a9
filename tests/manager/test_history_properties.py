"""Recovery, for any interleaving: hypothesis draws sends, drops, reconnects and recoveries
(with messages sent while a recovery reads the history), and every client must end with
exactly its group's sequence, each message once, in order.

Two set-ups: one node keeping history in memory (a recovery reads it at once), and two
nodes sharing a store that announces each message to both and answers reads a few
scheduling steps late, as a remote store does, so live messages arrive during recoveries
and a client recovers on the node it did not lose.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectSendStream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsfleet import ConnectionManager, HistoryPolicy, Position, RecoveryImpossible
from wsfleet._runtime.history import Arrived
from wsfleet.testing import MemoryTransport
from wsfleet.transport import Message

GROUP = "room"
CLIENTS = 3


def tag(message: Message, position: Position) -> str:
    return f"{position}|{message!s}"


class SharedStore:
    """A history store every node shares (what Redis is to a fleet), in this process.

    Each node hears the announcements through its own queue, drained by its own task, so a
    node may lag: a read can return messages a node has not heard yet, and a sender's
    ``append`` returns before its announcement is delivered anywhere."""

    def __init__(self) -> None:
        self.epoch = "shared"
        self.kept: list[str] = []
        self.queues: list[MemoryObjectSendStream[tuple[Any, ...]]] = []

    async def append(
        self,
        group: str,
        message: Message,
        policy: HistoryPolicy,
        skip: Collection[str],
        origin: str,
    ) -> Position:
        await checkpoint()
        self.kept.append(str(message))
        offset = len(self.kept)
        for queue in self.queues:  # in the store's order, to every node
            queue.send_nowait((group, self.epoch, offset, message, skip, origin))
        return Position(self.epoch, offset)

    async def read(
        self, group: str, after: int, policy: HistoryPolicy
    ) -> tuple[str | None, list[tuple[int, Message]]]:
        for _ in range(3):
            await checkpoint()  # a round trip: other tasks send meanwhile
        kept = self.kept
        return self.epoch, [(n, kept[n - 1]) for n in range(after + 1, len(kept) + 1)]

    async def run(self, arrived: Arrived, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        send, receive = anyio.create_memory_object_stream[tuple[Any, ...]](1000)
        self.queues.append(send)
        task_status.started()
        try:
            async with receive:
                async for note in receive:
                    await checkpoint()  # this node lags a little behind the store
                    await arrived(*note)
        finally:
            self.queues.remove(send)
            send.close()


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 1), st.just(0)),
        st.tuples(st.just("drop"), st.integers(0, CLIENTS - 1), st.just(0)),
        st.tuples(st.just("back"), st.integers(0, CLIENTS - 1), st.integers(0, 3)),
    ),
    max_size=30,
)


async def scenario(ops: list[tuple[str, int, int]], shared: bool, seed: int) -> None:
    size = 1000 if shared else 4
    store = SharedStore() if shared else None
    rng = random.Random(seed)
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                ConnectionManager(
                    heartbeat=None,
                    frame=tag,
                    history=HistoryPolicy(size=size),
                    history_store=store,
                )
            )
            for _ in range(2 if shared else 1)
        ]
        sequence: list[str] = []
        # Per client: the node, the socket (None while dropped), everything it was sent,
        # and where its unbroken run of the group's messages starts.
        where: list[int] = [0] * CLIENTS
        sockets: list[MemoryTransport | None] = [None] * CLIENTS
        logs: list[list[str]] = [[] for _ in range(CLIENTS)]
        starts: list[int] = [0] * CLIENTS

        async def send(node: int) -> None:
            text = f"m{len(sequence)}"
            sequence.append(text)
            await nodes[node % len(nodes)].send_to_group(GROUP, text)

        def collect(client: int) -> None:
            socket = sockets[client]
            if socket is not None:
                logs[client].extend(str(m) for m in socket.received)
                socket.received.clear()

        async def flushed() -> None:
            with anyio.fail_after(10):
                while any(m.stats().queued_messages for m in nodes):
                    await anyio.sleep(0.001)

        for client in range(CLIENTS):  # everyone starts in the room, on the first node
            sockets[client] = MemoryTransport(f"c{client}")
            nodes[0].register(sockets[client], f"client{client}")
            nodes[0].add_to_group(f"client{client}", GROUP)

        for op, arg, during in ops:
            if op == "send":
                await send(arg)
            elif op == "drop" and sockets[arg] is not None:
                await flushed()
                collect(arg)
                nodes[where[arg]].unregister(sockets[arg])
                sockets[arg] = None
            elif op == "back" and sockets[arg] is None:
                node = rng.randrange(len(nodes))
                socket = MemoryTransport(f"c{arg}")
                manager = nodes[node]
                where[arg], sockets[arg] = node, socket
                since = logs[arg][-1].split("|", 1)[0] if logs[arg] else None
                if since is None:  # new: it gets what comes from now on
                    manager.register(socket, f"client{arg}")
                    manager.add_to_group(f"client{arg}", GROUP)
                    starts[arg] = len(sequence)
                    continue
                missed = len(sequence) - int(since.rsplit(":", 1)[1])
                async with anyio.create_task_group() as tg:

                    async def recovering(
                        manager: ConnectionManager = manager,
                        socket: MemoryTransport = socket,
                        since: str = since,
                        missed: int = missed,
                        client: int = arg,
                        *,
                        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
                    ) -> None:
                        # Back, in the room, and recovering, with nothing in between (as an
                        # application does it); the sends below run while it reads.
                        manager.register(socket, f"client{client}")
                        manager.add_to_group(f"client{client}", GROUP)
                        task_status.started()
                        try:
                            replayed = await manager.recover(socket, GROUP, since=since)
                        except RecoveryImpossible:
                            assert missed > size, "refused though the history held it all"
                            logs[client].append("reload")
                            starts[client] = -1  # its run restarts at what it gets next
                            return
                        assert replayed >= missed

                    await tg.start(recovering)
                    for _ in range(during):
                        await send(rng.randrange(2))
        await flushed()
        if shared:
            with anyio.fail_after(10):  # every node has heard everything
                while any(
                    int(str(s.received[-1]).split("|")[0].rsplit(":", 1)[1]) < len(sequence)
                    for s in sockets
                    if s is not None and s.received
                ):
                    await anyio.sleep(0.001)
        for client in range(CLIENTS):
            collect(client)
            got = logs[client]
            if "reload" in got:
                got = got[len(got) - 1 - got[::-1].index("reload") + 1 :]
            texts = [line.split("|", 1)[1] for line in got]
            if not texts:
                continue
            first = sequence.index(texts[0])
            if sockets[client] is not None:
                assert texts == sequence[first:], f"client {client}"
            else:  # dropped for good: what it got is an unbroken run
                assert texts == sequence[first : first + len(texts)], f"client {client}"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("shared", [False, True], ids=["memory", "shared-store"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, seed=st.integers(0, 2**16))
def test_every_recovering_client_ends_with_the_groups_exact_sequence(
    backend: str, shared: bool, ops: list[tuple[str, int, int]], seed: int
) -> None:
    options: dict[str, Any] = {}
    anyio.run(scenario, ops, shared, seed, backend=backend, backend_options=options)
