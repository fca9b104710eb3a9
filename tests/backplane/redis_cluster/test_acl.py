"""The Redis ACL that docs/howto/redis.md gives for a cluster works: a fleet runs under it on
a real Redis Cluster, and it keeps its user out of every other key and channel.

ACLs are per node in a cluster: the rule is set on all six (a replica that takes over
must know the user too).
"""

from __future__ import annotations

import anyio
import coredis
import pytest
from coredis.connection import TCPLocation

from redis_server import UNCLOSED, RedisCluster
from support import ROOT, connected, wait_until
from wsfleet import ConnectionManager
from wsfleet.adapters.redis import RedisBackplane
from wsfleet.testing import MemoryTransport
from wsfleet.testing.redis_cluster import command

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings(f"ignore:{UNCLOSED}:ResourceWarning"),
]

#: As docs/howto/redis.md gives it (the password aside).
ACL = (
    "ACL SETUSER wsfleet on >{password} resetkeys resetchannels ~{{wsfleet}}:* "
    "&{{wsfleet}}:bus -@all +@connection +spublish +ssubscribe +sunsubscribe +hset +hdel "
    "+hgetall +hlen +hscan +del +exists +pexpire +zadd +zrem +zrange +zremrangebyscore "
    "+multi +exec +cluster|slots +cluster|keyslot"
)
PASSWORD = "a-long-random-password-for-the-test"


def test_the_page_shows_this_rule() -> None:
    page = (ROOT / "docs" / "howto" / "redis.md").read_text()
    assert ACL.format(password="<password>") in " ".join(page.split())


async def test_a_fleet_runs_under_the_acl_and_nothing_else(redis_cluster: RedisCluster) -> None:
    _, _, user, *rules = ACL.format(password=PASSWORD).split()
    for port in redis_cluster.ports:
        assert command(port, "ACL", "DELUSER", user) in (0, 1)
        assert command(port, "ACL", "SETUSER", user, *rules) == "OK"
        assert command(port, "ACL", "LOG", "RESET") == "OK"  # the last test's intruder
    url = redis_cluster.url.replace("redis://", f"redis://wsfleet:{PASSWORD}@")
    options = {"cluster": True, "heartbeat_interval": 0.1, "node_ttl": 0.4}
    async with (
        ConnectionManager(backplane=RedisBackplane(url, node_id="n1", **options)) as n1,
        ConnectionManager(backplane=RedisBackplane(url, node_id="n2", **options)) as n2,
    ):
        bob = MemoryTransport()
        n2.register(bob, "bob")
        n2.add_to_group("bob", "room")
        await wait_until(lambda: connected(n1, n2), "both connected")
        await wait_until(lambda: n1.get_group_members("room") == {"bob"}, "n1 sees bob")
        await n1.send_to_group("room", "hello bob")
        await wait_until(lambda: bob.received == ["hello bob"], "bob got it")
        await anyio.sleep(0.3)  # a few heartbeats, each a pipeline and a read
        for manager in (n1, n2):
            stats = manager.stats()
            assert stats.backplane_state == "CONNECTED"
            assert stats.backplane is not None
            assert stats.backplane.get("link error", 0) == 0
    for port in redis_cluster.ports:
        assert command(port, "ACL", "LOG") == [], port  # nothing was refused anywhere
    host, port = redis_cluster.startup_nodes[0]
    async with coredis.RedisCluster(
        startup_nodes=[TCPLocation(host, port)],
        username="wsfleet",
        password=PASSWORD,
        skip_full_coverage_check=True,
    ) as intruder:
        for attempt in (
            lambda: intruder.get("another-app:key"),
            lambda: intruder.hset("another-app:node:x", {"a": "b"}),
            lambda: intruder.spublish("another-app:bus", "x"),
            lambda: intruder.publish("{wsfleet}:bus", "x"),
            lambda: intruder.get("{wsfleet}:nodes"),
        ):
            with pytest.raises(coredis.exceptions.RedisError, match=r"(?i)noperm|permission"):
                await attempt()
