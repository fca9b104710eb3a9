"""Server-side resumption: a session whose client vanished is held for it to come back.

A manager with a retry policy holds a session that ended abnormally: ERROR, then
RECONNECTING while it waits, still registered, its groups kept, what is sent to it
buffered. A socket that registers with the same identifier and the session's resume token
within the window takes it over (buffered messages first, in order, exactly once); a wrong
token never does. When the window passes, the session is DISCONNECTED and forgotten, and its
buffer is dropped and counted.

Over the network: the websockets harness on asyncio and trio, a raw TCP peer that vanishes
without a close frame, and real clients that come back with ``?id=...&resume=<token>``.
Without the network: ``Peer``, a ``MemoryTransport`` a session can read from.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc
import pytest

from support import LATE, MICROSECOND, C, D, E, R, pairs, wait_for
from wsfleet import (
    ConnectionManager,
    ConnectionState,
    RetryPolicy,
    Session,
    StateChange,
    TransportClosed,
)
from wsfleet.testing import MemoryTransport

from .clients import client, raw_upgrade
from .harness_websockets import serve

pytestmark = pytest.mark.anyio


def policy(**kwargs: Any) -> RetryPolicy:
    """ERROR lasts 0.1 s, then the session waits in RECONNECTING: 0.1 + 0.2 + 0.4 s in all."""
    settings: dict[str, Any] = {"max_attempts": 3, "base_delay": 0.1, "jitter": 0.0, "seed": 1}
    settings.update(kwargs)
    return RetryPolicy(**settings)


# -- the application --------------------------------------------------------------------------


class ChatApp:
    """Hands each client its resume token first; a client comes back with ``?resume=``.

    A fresh session joins the group "room"; a resumed one is told "welcome back" (after
    what was buffered for it, which was queued first).
    """

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        self.sessions: list[Session] = []
        self.changes: list[StateChange] = []
        manager.on_state_change(self.changes.append)

    async def handler(self, ws: Any, identifier: str) -> None:
        resume = parse_qs(urlsplit(ws.request.path).query).get("resume", [None])[0]
        async with self.manager.session(ws, identifier, resume=resume) as session:
            self.sessions.append(session)
            if session.resumed:
                await session.send("welcome back")
            else:
                self.manager.add_to_group(identifier, "room")
                await session.send(f"token:{session.resume_token}")
            async for _ in session:  # clients say nothing here; the loop ends with the socket
                pass

    def changes_of(self, identifier: str) -> list[StateChange]:
        return [c for c in self.changes if getattr(c.connection, "identifier", None) == identifier]


@asynccontextmanager
async def chat(**settings: Any) -> AsyncIterator[tuple[ChatApp, str]]:
    settings.setdefault("retry_policy", policy())
    async with ConnectionManager(close_timeout=0.5, **settings) as manager:
        app = ChatApp(manager)
        async with serve(app.handler) as url:
            yield app, url


async def read_text(stream: anyio.abc.SocketStream) -> str:
    """One short text frame from the server (unmasked, payload < 126 bytes)."""
    header = b""
    with anyio.fail_after(5):
        while len(header) < 2:
            header += await stream.receive(2 - len(header))
        assert header[0] == 0x81, header  # FIN + text
        size = header[1]
        assert size < 126
        payload = b""
        while len(payload) < size:
            payload += await stream.receive(size - len(payload))
    return payload.decode()


async def vanishing_client(url: str, identifier: str) -> str:
    """A client that gets its token, then loses its TCP connection (no close frame)."""
    stream = await raw_upgrade(f"{url}?id={identifier}")
    first = await read_text(stream)
    assert first.startswith("token:")
    await stream.aclose()
    return first.removeprefix("token:")


async def receive_all(ws: Any, count: int) -> list[str]:
    with anyio.fail_after(5):
        return [await ws.recv() for _ in range(count)]


async def nothing_more(ws: Any, seconds: float = 0.2) -> bool:
    with anyio.move_on_after(seconds):
        await ws.recv()
        return False
    return True


# -- held, then taken over ---------------------------------------------------------------------


async def test_an_abnormal_end_is_held_and_the_right_token_takes_it_over() -> None:
    async with chat() as (app, url):
        manager = app.manager
        token = await vanishing_client(url, "alice")
        await wait_for(lambda: len(app.changes_of("alice")) >= 2)
        held = app.sessions[0].connection
        assert held.state in (E, R)
        assert held.resume_token == token

        # Held: still registered, still in its groups, and what is sent to it waits.
        assert manager.identifiers() == {"alice"}
        assert manager.get_group_members("room") == {"alice"}
        assert await manager.send_to_group("room", "buffered 1") == 1
        assert await manager.send_to_one("alice", "buffered 2") == 1
        assert await manager.broadcast("buffered 3") == 1
        assert held.queued == 3
        await wait_for(lambda: held.state is R)  # after the policy's first delay

        async with client(f"{url}?id=alice&resume={token}") as alice:
            # Buffered first, in order, then what the handler said on resuming.
            assert await receive_all(alice, 4) == [
                "buffered 1",
                "buffered 2",
                "buffered 3",
                "welcome back",
            ]
            resumed = app.sessions[1]
            assert resumed.resumed
            assert resumed.connection is held
            assert held.state is C
            assert manager.stats().queued_messages == 0
            await manager.send_to_group("room", "new")
            assert await receive_all(alice, 1) == ["new"]
            assert await nothing_more(alice)  # exactly once: nothing is sent twice
            assert manager.count() == 1
            assert manager.get_group_members("room") == {"alice"}
            await wait_for(lambda: len(app.changes_of("alice")) == 4)

    changes = app.changes_of("alice")
    assert pairs(changes)[:4] == [(None, C), (C, E), (E, R), (R, C)]
    assert changes[1].reason == "abnormal close (1006)"
    assert changes[3].reason == "resumed"
    assert manager.stats().drops == {}


@pytest.mark.parametrize("whose", ["wrong token", "another identifier's token"])
async def test_a_wrong_token_never_takes_over(whose: str) -> None:
    async with chat() as (app, url):
        manager = app.manager
        alice_token = await vanishing_client(url, "alice")
        await wait_for(lambda: len(app.changes_of("alice")) >= 2)
        held = app.sessions[0].connection
        await manager.send_to_one("alice", "for alice only")

        identifier, token = ("alice", "x" * len(alice_token))
        if whose == "another identifier's token":
            identifier, token = ("bob", alice_token)
        async with client(f"{url}?id={identifier}&resume={token}") as ws:
            first = await receive_all(ws, 1)
            fresh = app.sessions[1]
            assert not fresh.resumed
            assert fresh.connection is not held
            assert first == [f"token:{fresh.resume_token}"]  # a new session, a new token
            assert fresh.resume_token != alice_token
            assert await nothing_more(ws)  # none of alice's buffer

            # The held session is untouched: same socket, state, queue and token.
            assert held.state in (E, R)
            assert held.registered
            assert held.queued == 1
            assert held.resume_token == alice_token
            assert manager.count() == 2

            # And the right token still works.
            async with client(f"{url}?id=alice&resume={alice_token}") as alice:
                assert await receive_all(alice, 2) == ["for alice only", "welcome back"]
                assert app.sessions[2].resumed
                assert app.sessions[2].connection is held


async def test_a_token_is_good_for_one_resumption_and_the_new_socket_gets_a_fresh_one() -> None:
    """A token travels in URLs: replayed after it was used, it names nothing."""
    async with chat() as (app, url):
        manager = app.manager
        old_token = await vanishing_client(url, "alice")
        await wait_for(lambda: app.sessions[0].connection.state is R)
        held = app.sessions[0].connection
        async with client(f"{url}?id=alice&resume={old_token}") as alice:
            assert await receive_all(alice, 1) == ["welcome back"]
            resumed = app.sessions[1]
            assert resumed.resumed
            new_token = resumed.resume_token
            assert new_token is not None
            assert new_token != old_token
            assert held.resume_token == new_token
            await manager.send_to_one("alice", "for the resumed socket")
            assert await receive_all(alice, 1) == ["for the resumed socket"]
        # The resumed socket is gone too (cleanly): the session ends, nothing is held.
        await wait_for(lambda: not held.registered)

        alice_again = await vanishing_client(url, "alice")  # a later session, dropped, held
        await wait_for(lambda: app.sessions[2].connection.state is R)
        await manager.send_to_one("alice", "buffered for the holder of the new token")

        async with client(f"{url}?id=alice&resume={old_token}") as replay:
            first = await receive_all(replay, 1)
            fresh = app.sessions[3]
            assert not fresh.resumed
            assert first == [f"token:{fresh.resume_token}"]  # a fresh session ...
            assert await nothing_more(replay)  # ... and none of the buffered data
        assert app.sessions[2].connection.queued == 1  # still waiting for its own token
        async with client(f"{url}?id=alice&resume={alice_again}") as alice:
            assert await receive_all(alice, 2) == [
                "buffered for the holder of the new token",
                "welcome back",
            ]


# -- the window ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "window"),
    [
        pytest.param({"resume_window": 0.3}, 0.3, id="explicit"),
        # 0.1 + 0.2 + 0.4 s: as long as a client following the policy keeps trying.
        pytest.param({}, policy().max_total_delay(), id="from-the-policy"),
    ],
)
async def test_when_the_window_passes_the_session_is_dropped_and_counted(
    settings: dict[str, Any], window: float
) -> None:
    async with chat(**settings) as (app, url):
        manager = app.manager
        token = await vanishing_client(url, "alice")
        await wait_for(lambda: len(app.changes_of("alice")) >= 2)
        held = app.sessions[0].connection
        assert manager.resume_window_of(held) == pytest.approx(window)
        await manager.send_to_one("alice", "lost 1")
        await manager.send_to_group("room", "lost 2")

        await wait_for(lambda: held.state is D, within=window + LATE + 1)
        assert not held.registered
        assert manager.count() == 0
        assert manager.identifiers() == set()
        assert manager.get_group_members("room") == set()
        assert manager.stats().drops == {"disconnected": 2}
        await wait_for(lambda: app.changes_of("alice")[-1].new is D)

        # Too late: the token names nothing any more.
        async with client(f"{url}?id=alice&resume={token}") as alice:
            first = await receive_all(alice, 1)
            assert not app.sessions[1].resumed
            assert first == [f"token:{app.sessions[1].resume_token}"]

    changes = app.changes_of("alice")
    assert pairs(changes)[:4] == [(None, C), (C, E), (E, R), (R, D)]
    waited = (changes[3].at - changes[1].at).total_seconds() + MICROSECOND
    assert window <= waited <= window + LATE
    assert changes[3].reason == "resume window expired"


async def test_a_clean_close_is_not_held() -> None:
    async with chat() as (app, url):
        manager = app.manager
        async with client(f"{url}?id=alice") as alice:
            first = await receive_all(alice, 1)
            token = first[0].removeprefix("token:")
        await wait_for(lambda: manager.count() == 0)
        assert manager.get_group_members("room") == set()
        assert await manager.send_to_one("alice", "nobody") == 0
        async with client(f"{url}?id=alice&resume={token}") as alice:
            await receive_all(alice, 1)
            assert not app.sessions[1].resumed
    assert pairs(app.changes_of("alice"))[:2] == [(None, C), (C, D)]
    assert app.changes_of("alice")[1].reason == "closed (1000)"


async def test_without_a_retry_policy_nothing_is_held() -> None:
    async with chat(retry_policy=None) as (app, url):
        stream = await raw_upgrade(f"{url}?id=alice")
        assert await read_text(stream) == "token:None"
        assert app.sessions[0].resume_token is None
        await stream.aclose()
        await wait_for(lambda: app.manager.count() == 0)
    assert pairs(app.changes_of("alice")) == [(None, C), (C, E), (E, D)]


# -- without the network -----------------------------------------------------------------------


class Peer(MemoryTransport):
    """A ``MemoryTransport`` a session can iterate: it ends with ``vanish()`` or a close."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._ended = anyio.Event()
        self._closed_with = TransportClosed(1006, "connection lost")

    def vanish(self) -> None:
        """The TCP connection is lost: no close frame (1006)."""
        self._ended.set()

    async def receive(self) -> str:
        await self._ended.wait()
        raise self._closed_with

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self._ended.is_set():
            self._closed_with = TransportClosed(code, reason)
            self._ended.set()
        await super().close(code, reason)


async def hold(manager: ConnectionManager, peer: Peer, identifier: str) -> Session:
    """Run a session until its peer vanishes; returns it (held by the manager)."""
    async with manager.session(peer, identifier) as session:
        manager.add_to_group(identifier, "room")
        peer.vanish()
        async for _ in session:
            raise AssertionError("the peer sends nothing")  # pragma: no cover
    assert session.close_code == 1006
    return session


async def test_a_held_session_waits_in_reconnecting_at_once_and_is_taken_over() -> None:
    changes: list[StateChange] = []
    async with ConnectionManager(retry_policy=policy(base_delay=5.0)) as manager:
        manager.on_state_change(changes.append)
        old, new = Peer("old"), Peer("new")
        first = await hold(manager, old, "alice")
        conn = first.connection
        # Held at once, whatever the retry delay: a server's RECONNECTING means "holding".
        assert conn.state is R
        assert conn.held
        await manager.send_to_group("room", "m1")
        await manager.send_to_group("room", "m2")

        async with manager.session(new, "alice", resume=first.resume_token) as second:
            assert second.resumed
            assert second.connection is conn
            assert conn.state is C
            assert not conn.held
            await wait_for(lambda: new.received == ["m1", "m2"])
            await manager.send_to_one("alice", "m3")
            await wait_for(lambda: new.received == ["m1", "m2", "m3"])
            assert old.received == []
            assert old.connection is None  # detached: its late reports reach nobody
            await wait_for(lambda: old.close_code is not None)  # and closed
            await wait_for(lambda: len(changes) == 4)
        assert conn.state is D  # a clean end of the new socket's session
        assert manager.count() == 0
    assert pairs(changes)[:5] == [(None, C), (C, E), (E, R), (R, C), (C, D)]
    assert [c.reason for c in changes[2:4]] == ["holding for the client to resume", "resumed"]


async def test_a_taken_over_session_can_be_held_and_taken_over_again() -> None:
    async with ConnectionManager(retry_policy=policy(base_delay=5.0)) as manager:
        first = await hold(manager, Peer("first"), "alice")
        token = first.resume_token
        assert token is not None
        second_peer = Peer("second")
        async with manager.session(second_peer, "alice", resume=token) as second:
            assert second.resumed
            fresh = second.resume_token  # each resumption hands out a new token
            assert fresh is not None
            assert fresh != token
            second_peer.vanish()
            async for _ in second:
                raise AssertionError("the peer sends nothing")  # pragma: no cover
        conn = first.connection
        assert conn.state is R
        assert conn.held
        assert conn.attempts == 1  # it was up again: a new outage starts from zero, then holds
        await manager.send_to_one("alice", "still here")
        third_peer = Peer("third")
        async with manager.session(third_peer, "alice", resume=fresh) as third:
            assert third.resumed
            assert third.connection is conn
            await wait_for(lambda: third_peer.received == ["still here"])


async def test_a_resume_window_alone_makes_sessions_resumable() -> None:
    async with ConnectionManager(resume_window=0.3) as manager:  # no retry policy at all
        first = await hold(manager, Peer("first"), "alice")
        assert first.resume_token is not None
        assert first.connection.state is R
        await manager.send_to_one("alice", "kept")
        new = Peer("new")
        async with manager.session(new, "alice", resume=first.resume_token) as second:
            assert second.resumed
            await wait_for(lambda: new.received == ["kept"])
            assert manager.get_group_members("room") == {"alice"}


async def test_a_resume_window_alone_expires_on_time() -> None:
    async with ConnectionManager(resume_window=0.3) as manager:
        started = anyio.current_time()
        first = await hold(manager, Peer("first"), "alice")
        await manager.send_to_one("alice", "lost")
        await wait_for(lambda: manager.count() == 0)
        assert anyio.current_time() - started >= 0.3 - 0.05
        assert first.connection.state is ConnectionState.DISCONNECTED
        assert manager.stats().drops.get("disconnected") == 1


class SlowToClose(Peer):
    """A socket whose close takes a while to end its reader: a peer that stopped reading
    holds the closing handshake up until the close times out."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.released = anyio.Event()
        self.late: str | None = None

    async def receive(self) -> str:
        await self.released.wait()
        if self.late is not None:
            late, self.late = self.late, None
            return late
        raise TransportClosed(1008, "slow consumer")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await MemoryTransport.close(self, code, reason)


@pytest.mark.parametrize("last_word", ["a late close", "a late message"])
async def test_the_old_socket_of_a_resumed_session_reports_nothing_once_taken_over(
    last_word: str,
) -> None:
    """The client came back while its old socket was still closing: what that socket says
    afterwards (its close, a message read late) belongs to nobody, and the resumed session
    goes on untouched."""
    changes: list[StateChange] = []
    async with ConnectionManager(retry_policy=policy(base_delay=5.0)) as manager:
        manager.on_state_change(changes.append)
        old = SlowToClose("old")
        seen: list[str] = []
        ended = anyio.Event()
        tokens: list[str | None] = []
        with anyio.fail_after(10):
            await _race_a_resume_with_a_slow_close(manager, old, tokens, ended, seen, last_word)
        conn = manager.connection(manager.sockets_of("alice")[0]) if manager.count() else None
        assert conn is None  # the resumed session ended with its handler
        alice = [c for c in changes if getattr(c.connection, "identifier", None) == "alice"]
        assert [c.new for c in alice][:4] == [C, E, R, C]
        assert R not in [c.new for c in alice][4:]  # no retry loop after the take-over


async def _race_a_resume_with_a_slow_close(
    manager: ConnectionManager,
    old: SlowToClose,
    tokens: list[str | None],
    ended: anyio.Event,
    seen: list[str],
    last_word: str,
) -> None:
    async def old_handler() -> None:
        async with manager.session(old, "alice") as session:
            tokens.append(session.resume_token)
            manager.add_to_group("alice", "room")
            async for message in session:
                seen.append(message)  # pragma: no cover - the regression
        ended.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(old_handler)
        await wait_for(lambda: bool(tokens))
        conn = manager.connection(old)
        manager.set_connection_state(old, E, "evicted")  # held for its client to resume
        new = Peer("new")
        async with manager.session(new, "alice", resume=tokens[0]) as resumed:
            assert resumed.resumed
            assert conn.state is C
            if last_word == "a late message":
                old.late = "read after the take-over"
            old.released.set()  # the old socket's reader ends only now
            await ended.wait()
            assert seen == []
            assert conn.state is C  # neither ERROR nor a retry loop
            assert manager.connection(new) is conn
            await manager.send_to_group("room", "still delivered")
            await wait_for(lambda: new.received == ["still delivered"])
            new.vanish()
