"""Presence over real sockets (websockets on 127.0.0.1, asyncio and trio).

``session(..., meta=...)`` attaches the identity's metadata; a client that drops and comes
back within the resume window never goes offline (no offline/online flap); one that drops
for good goes offline once its window has passed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from support import wait_for
from wsfleet import ConnectionManager, PresenceEvent

from .clients import client
from .harness_websockets import serve
from .test_resumption import policy, vanishing_client

pytestmark = pytest.mark.anyio


class App:
    """Each session registers with the name in its URL as metadata, joins "room" and gets
    its resume token; a client comes back with ``&resume=<token>``."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        self.events: list[PresenceEvent] = []
        manager.on_presence(self.events.append)

    async def handler(self, ws: Any, identifier: str) -> None:
        query = parse_qs(urlsplit(ws.request.path).query)
        resume = query.get("resume", [None])[0]
        meta = {"name": query.get("name", [identifier])[0]}
        async with self.manager.session(ws, identifier, resume=resume, meta=meta) as session:
            if not session.resumed:
                self.manager.add_to_group(identifier, "room")
                await session.send(f"token:{session.resume_token}")
            async for _ in session:
                pass

    def seen(self) -> list[tuple[str, str, str | None]]:
        return [(e.kind, e.identifier, e.group) for e in self.events]


@asynccontextmanager
async def app(**settings: Any) -> AsyncIterator[tuple[App, str]]:
    async with ConnectionManager(close_timeout=0.5, **settings) as manager:
        application = App(manager)
        async with serve(application.handler) as url:
            yield application, url


async def test_a_sessions_metadata_is_its_identitys_presence() -> None:
    async with app() as (application, url):
        manager = application.manager
        async with client(f"{url}?id=alice&name=Alice") as ws:
            assert (await ws.recv()).startswith("token:")
            assert await manager.presence("room") == {"alice": {"name": "Alice"}}
            assert manager.online("alice")
            await wait_for(lambda: len(application.events) == 2)
            assert application.events[0] == PresenceEvent(
                "online", "alice", None, {"name": "Alice"}, "local"
            )
        await wait_for(lambda: len(application.events) == 4)
        assert application.seen() == [
            ("online", "alice", None),
            ("join", "alice", "room"),
            ("leave", "alice", "room"),
            ("offline", "alice", None),
        ]
        assert not manager.online("alice")
        assert await manager.presence("room") == {}


async def test_a_client_back_within_the_resume_window_never_goes_offline() -> None:
    async with app(retry_policy=policy(base_delay=2.0, max_delay=2.0)) as (application, url):
        manager = application.manager
        token = await vanishing_client(url, "alice")  # gone without a close frame
        await wait_for(lambda: manager.stats().held == 1)
        assert manager.online("alice")  # held: still online
        async with client(f"{url}?id=alice&resume={token}"):
            await wait_for(lambda: manager.stats().held == 0)
            assert manager.online("alice")
        await wait_for(lambda: len(application.events) == 4)
        assert application.seen() == [
            ("online", "alice", None),
            ("join", "alice", "room"),
            ("leave", "alice", "room"),  # the resumed session ended cleanly: now it goes
            ("offline", "alice", None),
        ]


async def test_a_client_that_does_not_come_back_goes_offline_when_its_window_ends() -> None:
    async with app(retry_policy=policy()) as (application, url):
        manager = application.manager
        await vanishing_client(url, "bob")
        await wait_for(lambda: manager.stats().held == 1)
        assert application.seen()[-1] != ("offline", "bob", None)
        await wait_for(lambda: not manager.online("bob"))
        await wait_for(lambda: len(application.events) == 4)
        assert application.seen() == [
            ("online", "bob", None),
            ("join", "bob", "room"),
            ("leave", "bob", "room"),
            ("offline", "bob", None),
        ]
