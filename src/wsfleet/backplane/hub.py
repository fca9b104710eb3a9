"""A store inside one process: ``InMemoryHub``.

Several managers in one program, one fleet, no network: to test a multi-node application,
or to join managers running on several event loops of one process. It keeps the contract of
``Store`` as a network store would: node leases expire on the hub's clock, a subscriber
hears only what is published after it subscribed, and ``down`` makes every operation fail
as an unreachable server would.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectSendStream

from .store import Store, StoreSession

__all__ = ["InMemoryHub"]


class InMemoryHub(Store):
    """A store inside one process: several managers, one fleet, no network.

    Useful to test a multi-node application, or to run several event loops' managers in
    one program. Node leases expire on the hub's clock exactly as they would in Redis.
    ``down = True`` makes every session and operation fail until it is set back.
    """

    def __init__(self) -> None:
        self._subscribers: list[MemoryObjectSendStream[bytes]] = []
        self.members: dict[str, dict[str, list[str]]] = {}
        #: node -> identifier -> its presence metadata there
        self.metas: dict[str, dict[str, Mapping[str, Any]]] = {}
        self.leases: dict[str, float] = {}
        self.down = False

    @asynccontextmanager
    async def session(self) -> AsyncIterator[StoreSession]:
        if self.down:
            raise ConnectionError("the hub is down")
        yield _HubSession(self)


class _HubSession(StoreSession):
    def __init__(self, hub: InMemoryHub) -> None:
        self.hub = hub

    def _check(self) -> None:
        if self.hub.down:
            raise ConnectionError("the hub is down")

    async def publish(self, data: bytes) -> int:
        self._check()
        receivers = 0
        for stream in list(self.hub._subscribers):
            with suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                stream.send_nowait(data)
                receivers += 1
        await checkpoint()
        return receivers

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[bytes]]:
        self._check()
        send, receive = anyio.create_memory_object_stream[bytes](10_000)
        self.hub._subscribers.append(send)
        try:
            async with receive:
                messages = self._messages(receive)
                try:
                    yield messages
                finally:
                    await messages.aclose()  # left suspended, it would be finalised by the GC
        finally:
            self.hub._subscribers.remove(send)
            send.close()

    async def _messages(self, receive: Any) -> AsyncGenerator[bytes]:
        async for data in receive:
            self._check()
            yield data

    async def put_member(
        self,
        node: str,
        identifier: str,
        groups: list[str],
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self._check()
        self.hub.members.setdefault(node, {})[identifier] = groups
        metas = self.hub.metas.setdefault(node, {})
        if meta:
            metas[identifier] = meta
        else:
            metas.pop(identifier, None)

    async def del_member(self, node: str, identifier: str) -> None:
        self._check()
        self.hub.members.get(node, {}).pop(identifier, None)
        self.hub.metas.get(node, {}).pop(identifier, None)

    async def replace_node(
        self,
        node: str,
        snapshot: Mapping[str, list[str]],
        ttl: float,
        *,
        metas: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self._check()
        self.hub.members[node] = dict(snapshot)
        self.hub.metas[node] = dict(metas or {})
        await self.beat(node, ttl)

    async def beat(self, node: str, ttl: float) -> None:
        self._check()
        self.hub.leases[node] = anyio.current_time() + ttl

    async def live_nodes(self) -> set[str]:
        self._check()
        now = anyio.current_time()
        for node, until in list(self.hub.leases.items()):
            if until <= now:
                del self.hub.leases[node]
                self.hub.members.pop(node, None)
                self.hub.metas.pop(node, None)
        return set(self.hub.leases)

    async def load(self, node: str) -> dict[str, list[str]]:
        self._check()
        return dict(self.hub.members.get(node, {}))

    async def load_record(self, node: str) -> tuple[dict[str, list[str]], dict[str, object]]:
        snapshot = await self.load(node)
        return snapshot, dict(self.hub.metas.get(node, {}))

    async def forget(self, node: str) -> None:
        self._check()
        self.hub.leases.pop(node, None)
        self.hub.members.pop(node, None)
        self.hub.metas.pop(node, None)
