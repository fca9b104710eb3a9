"""The Redis ACL that docs/howto/security.md gives works: a fleet runs under it, and it
keeps its user out of every other key and channel.

The rule below is the one the page shows, for the default namespace ``wsfleet``.
"""

from __future__ import annotations

import anyio
import pytest

from redis_server import RedisServer
from support import ROOT
from wsfleet import ConnectionManager
from wsfleet.testing import MemoryTransport

coredis = pytest.importorskip("coredis")

pytestmark = pytest.mark.anyio

#: As docs/howto/security.md gives it (the password aside).
ACL = (
    "ACL SETUSER wsfleet on >{password} resetkeys resetchannels ~wsfleet:* &wsfleet:bus "
    "-@all +@connection +publish +spublish +subscribe +ssubscribe +unsubscribe +sunsubscribe "
    "+hset +hdel +hgetall +hlen +hscan +del +pexpire +zadd +zrem +zrange +zremrangebyscore "
    "+multi +exec"
)
PASSWORD = "a-long-random-password-for-the-test"


def test_the_page_shows_this_rule() -> None:
    page = (ROOT / "docs" / "howto" / "security.md").read_text()
    assert ACL.format(password="<password>") in " ".join(page.split())


async def test_a_fleet_runs_under_the_acl_and_nothing_else(redis: RedisServer) -> None:
    from wsfleet.adapters.redis import RedisBackplane

    async with coredis.Redis.from_url(redis.url) as admin:
        _, _, user, *rules = ACL.format(password=PASSWORD).split()
        assert await admin.acl_setuser(user, *rules)
    url = redis.url.replace("redis://", f"redis://wsfleet:{PASSWORD}@")
    options = {"heartbeat_interval": 0.1, "node_ttl": 0.4, "secrets": "s" * 32}
    async with (
        ConnectionManager(backplane=RedisBackplane(url, node_id="n1", **options)) as n1,
        ConnectionManager(backplane=RedisBackplane(url, node_id="n2", **options)) as n2,
    ):
        bob = MemoryTransport()
        n2.register(bob, "bob")
        n2.add_to_group("bob", "room")
        with anyio.fail_after(15):
            while not all(m.stats().backplane_state == "CONNECTED" for m in (n1, n2)):
                await anyio.sleep(0.01)
            while n1.get_group_members("room") != {"bob"}:
                await anyio.sleep(0.01)
            await n1.send_to_group("room", "hello bob")
            while bob.received != ["hello bob"]:
                await anyio.sleep(0.01)
        for manager in (n1, n2):
            stats = manager.stats()
            assert stats.backplane_state == "CONNECTED"
            assert stats.backplane is not None
            assert stats.backplane.get("link error", 0) == 0
    async with coredis.Redis.from_url(url) as user:
        for command in (
            lambda: user.get("another-app:key"),
            lambda: user.hset("another-app:node:x", {"a": "b"}),
            lambda: user.publish("another-app:bus", "x"),
            lambda: user.keys("*"),
            lambda: user.flushall(),
            lambda: user.config_get(["*"]),
        ):
            with pytest.raises(coredis.exceptions.RedisError, match=r"(?i)noperm|permission"):
                await command()
