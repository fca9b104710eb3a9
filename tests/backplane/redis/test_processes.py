"""Real separate processes, one fleet: each node is an OS process (``_node.py``) serving real
WebSocket clients with its own manager and ``RedisBackplane`` on one ``redis-server``.

The test drives each node through its stdin/stdout and listens with real websockets clients:
a message sent on any node reaches every target client exactly once, in the sender's order;
then one node is SIGKILLed, so it cleans nothing up, and the survivor must drop its
identifiers from presence and group membership within ``node_ttl + heartbeat_interval``.
With three nodes, every node reports each presence change once, and the identities of the
one SIGKILLed go offline on each survivor once, within the same bound.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from adapters.clients import client
from redis_server import UNCLOSED, RedisServer

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,  # a Python process per node
    # coredis leaves the memory streams of a failed dial to the GC (see the other module).
    pytest.mark.filterwarnings(f"ignore:{UNCLOSED}:ResourceWarning"),
]

NODE = Path(__file__).resolve().parent / "_node.py"
HEARTBEAT = 0.2
TTL = 0.6
#: Scheduling slack on top of the documented bound: process start-up, polling, a busy CI box.
SLACK = 0.4


class Node:
    """A node process and the two ends of its protocol."""

    def __init__(self, name: str, process: anyio.abc.Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self.name = name
        self.process = process
        self.stdin = process.stdin
        self.stdout = BufferedByteReceiveStream(process.stdout)
        self.events: list[dict[str, Any]] = []
        self.url = ""
        self._number = 0

    async def _line(self) -> dict[str, Any]:
        line = await self.stdout.receive_until(b"\n", 1 << 20)
        message: dict[str, Any] = json.loads(line)
        return message

    async def ready(self) -> None:
        with anyio.fail_after(15):
            while True:
                message = await self._line()
                if message.get("event") == "ready":
                    self.url = message["url"]
                    return
                self.events.append(message)

    async def call(self, op: str, **args: Any) -> Any:
        self._number += 1
        number = self._number
        await self.stdin.send(json.dumps({"n": number, "op": op, **args}).encode() + b"\n")
        with anyio.fail_after(5):
            while True:
                message = await self._line()
                if message.get("reply") == number:
                    assert message["ok"], message.get("error")
                    return message["result"]
                self.events.append(message)

    async def until(self, what: str, check: Callable[[], Any], timeout: float = 5.0) -> None:
        """Poll the node until ``check`` (which calls it) is true."""
        with anyio.move_on_after(timeout):
            while not await check():
                await anyio.sleep(0.02)
            return
        raise AssertionError(f"{self.name}: after {timeout} s, still not: {what}")


@asynccontextmanager
async def start_node(redis: RedisServer, name: str, backend: str, log: Path) -> AsyncIterator[Node]:
    argv = [
        sys.executable, str(NODE), redis.url, name, "--backend", backend,
        "--heartbeat", str(HEARTBEAT), "--ttl", str(TTL),
    ]  # fmt: skip
    with log.open("wb") as stderr:
        process = await anyio.open_process(argv, stderr=stderr)
    node = Node(name, process)
    try:
        yield node
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            await process.aclose()


class Listener:
    """A real websockets client connected to a node; collects what it receives."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received: list[str] = []
        self.closed = anyio.Event()

    async def run(self, url: str, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            async with client(f"{url}?id={self.name}") as ws:
                task_status.started()
                async for message in ws:
                    self.received.append(str(message))
        except Exception:  # the node was killed under it
            pass
        finally:
            self.closed.set()


async def test_separate_processes_deliver_once_and_forget_a_killed_node(
    redis: RedisServer, anyio_backend: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        p1 = await stack.enter_async_context(
            start_node(redis, "p1", anyio_backend, tmp_path / "p1.log")
        )
        p2 = await stack.enter_async_context(
            start_node(redis, "p2", anyio_backend, tmp_path / "p2.log")
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(p1.ready)
            tg.start_soon(p2.ready)

        # alice on p1, bob on p2, carol on both.
        sockets = {
            ("alice", "p1"): Listener("alice"),
            ("bob", "p2"): Listener("bob"),
            ("carol", "p1"): Listener("carol"),
            ("carol", "p2"): Listener("carol"),
        }
        urls = {"p1": p1.url, "p2": p2.url}
        tg = await stack.enter_async_context(anyio.create_task_group())
        for (_, node), listener in sockets.items():
            await tg.start(listener.run, urls[node])

        async def sees_everyone(node: Node) -> bool:
            return (
                await node.call("nodes_of", identifier="carol") == ["p1", "p2"]
                and await node.call("nodes_of", identifier="alice") == ["p1"]
                and await node.call("nodes_of", identifier="bob") == ["p2"]
                and await node.call("online_count") == 3
            )

        await p1.until("sees everyone", lambda: sees_everyone(p1))
        await p2.until("sees everyone", lambda: sees_everyone(p2))

        await p1.call("add_to_group", identifier="alice", group="room")
        await p2.call("add_to_group", identifier="bob", group="room")
        await p1.call("add_to_group", identifier="carol", group="room")  # both her sockets

        async def room_is_full(node: Node) -> bool:
            members = await node.call("members", group="room")
            return bool(members == ["alice", "bob", "carol"])

        await p1.until("room is full", lambda: room_is_full(p1))
        await p2.until("room is full", lambda: room_is_full(p2))

        # Each node sends; every target socket, wherever it is, gets each message once.
        script: list[tuple[Node, str, dict[str, Any], set[str]]] = []
        for i in range(5):
            for node in (p1, p2):
                tag = f"{node.name}:{i}"
                script += [
                    (node, "broadcast", {"message": f"{tag}:all"}, {"alice", "bob", "carol"}),
                    (
                        node,
                        "send_to_one",
                        {"identifier": "carol", "message": f"{tag}:one"},
                        {"carol"},
                    ),
                    (
                        node,
                        "send_to_many",
                        {"identifiers": ["alice", "bob"], "message": f"{tag}:many"},
                        {"alice", "bob"},
                    ),
                    (
                        node,
                        "send_to_group",
                        {"group": "room", "message": f"{tag}:group"},
                        {"alice", "bob", "carol"},
                    ),
                ]
        expected: dict[tuple[str, str], list[str]] = {key: [] for key in sockets}
        for node, op, args, targets in script:
            result = await node.call(op, **args)
            local = [key for key in sockets if key[1] == node.name and key[0] in targets]
            assert result == {"local": len(local), "published": True}
            for key in sockets:
                if key[0] in targets:
                    expected[key].append(args["message"])

        with anyio.fail_after(5):
            while any(len(sockets[k].received) < len(expected[k]) for k in sockets):
                await anyio.sleep(0.01)
        await anyio.sleep(0.1)  # room for a duplicate to show up
        for key, listener in sockets.items():
            received = listener.received
            assert sorted(received) == sorted(expected[key]), key
            for sender in ("p1", "p2"):
                assert [m for m in received if m.startswith(sender)] == [
                    m for m in expected[key] if m.startswith(sender)
                ], key

        # SIGKILL p2: no clean-up at all. p1 must forget bob, and carol's socket there, on
        # its own, within node_ttl + heartbeat_interval.
        killed = anyio.current_time()
        p2.process.kill()

        async def p2_is_gone() -> bool:
            return (
                await p1.call("nodes_of", identifier="bob") == []
                and await p1.call("nodes_of", identifier="carol") == ["p1"]
                and await p1.call("members", group="room") == ["alice", "carol"]
                and await p1.call("groups_of", identifier="bob") == []
                and await p1.call("online_count") == 2
            )

        await p1.until("p2 forgotten", p2_is_gone, timeout=TTL + HEARTBEAT + 3)
        took = anyio.current_time() - killed
        assert took <= TTL + HEARTBEAT + SLACK, f"p2 lingered {took:.2f} s"
        await sockets["bob", "p2"].closed.wait()

        # p1 carries on: its own sockets still get what it sends.
        assert await p1.call("send_to_group", group="room", message="after") == {
            "local": 2,
            "published": True,
        }
        with anyio.fail_after(5):
            while sockets["carol", "p1"].received[-1:] != ["after"]:
                await anyio.sleep(0.01)
        assert sockets["alice", "p1"].received[-1] == "after"
        stats = await p1.call("stats")
        assert stats["backplane_state"] == "CONNECTED"
        assert stats["backplane"]["nodes expired"] == 1
        assert stats["backplane"].get("malformed", 0) == 0

        assert await p1.call("quit") is None
        with anyio.fail_after(10):
            await p1.process.wait()
        assert p1.process.returncode == 0
        tg.cancel_scope.cancel()


def presence_events(node: Node) -> list[tuple[str, str, str | None, str]]:
    """The presence events ``node`` reported so far: (kind, identifier, group, node)."""
    return [
        (e["kind"], e["id"], e["group"], e["node"])
        for e in node.events
        if e.get("event") == "presence"
    ]


async def test_presence_events_once_per_node_and_a_killed_nodes_identities_go_offline_once(
    redis: RedisServer, anyio_backend: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                start_node(redis, name, anyio_backend, tmp_path / f"{name}.log")
            )
            for name in ("p1", "p2", "p3")
        ]
        p1, p2, p3 = nodes
        async with anyio.create_task_group() as tg:
            for node in nodes:
                tg.start_soon(node.ready)

        # alice on p1, bob on p3, carol on p2 and p3 (two nodes: one identity).
        tg = await stack.enter_async_context(anyio.create_task_group())
        for name, node in (("alice", p1), ("bob", p3), ("carol", p2), ("carol", p3)):
            await tg.start(Listener(name).run, node.url)
        await p3.call("add_to_group", identifier="bob", group="room")
        await p2.call("add_to_group", identifier="carol", group="room")

        async def room_is_full(node: Node) -> bool:
            presence = await node.call("presence", group="room")
            return bool(presence == {"bob": {"name": "Bob"}, "carol": {"name": "Carol"}})

        for node in nodes:
            await node.until("room is full", lambda n=node: room_is_full(n))

        async def reported(node: Node, count: int) -> bool:
            await node.call("online_count")  # reads what the node wrote meanwhile
            return len(presence_events(node)) >= count

        before = [
            ("join", "bob", "room", "p3"),
            ("join", "carol", "room", "p2"),
            ("online", "alice", None, "p1"),
            ("online", "bob", None, "p3"),
        ]
        for node in nodes:
            await node.until("everyone reported", lambda n=node: reported(n, 5))
            seen = presence_events(node)
            assert sorted(e for e in seen if e[1] != "carol" or e[0] != "online") == before
            assert [e[:3] for e in seen].count(("online", "carol", None)) == 1

        killed = anyio.current_time()
        p3.process.kill()  # SIGKILL: no word to anyone; its lease runs out
        survivors = (p1, p2)
        for node in survivors:
            await node.until(
                "bob offline", lambda n=node: reported(n, 7), timeout=TTL + HEARTBEAT + 3
            )
        took = anyio.current_time() - killed
        assert took <= TTL + HEARTBEAT + SLACK, f"p3's identities lingered {took:.2f} s"
        await anyio.sleep(2 * TTL)  # room for a repeated or flapping event to show up
        for node in survivors:
            await node.call("online_count")
            assert presence_events(node)[5:] == [
                ("leave", "bob", "room", "p3"),
                ("offline", "bob", None, "p3"),
            ], node.name
            assert await node.call("online", identifier="carol") is True
            assert await node.call("online", identifier="bob") is False
            assert await node.call("presence", group="room") == {"carol": {"name": "Carol"}}
            assert (await node.call("stats"))["backplane"].get("malformed", 0) == 0
        tg.cancel_scope.cancel()
