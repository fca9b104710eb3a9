"""The throw-away Redis Cluster and Sentinel setups (``wsfleet.testing``): what they start
is what they say, and nothing of them is left once they close."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from redis_server import RedisServerError, ping, running_redis_cluster, running_redis_sentinel
from wsfleet.testing.redis_cluster import RedisCluster, command


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_cluster_of_three_shards_each_with_a_replica_and_nothing_left_after() -> None:
    with running_redis_cluster() as cluster:
        assert len(cluster.nodes) == 6
        assert len(set(cluster.ports)) == 6
        assert 6379 not in cluster.ports
        shards = cluster.shards()
        assert len(shards) == 3
        assert all(len(shard.replicas) == 1 for shard in shards)
        covered = sorted(r for shard in shards for r in shard.slots)
        assert covered[0][0] == 0
        assert covered[-1][1] == 16383
        assert sum(high - low + 1 for low, high in covered) == 16384
        for node in cluster.nodes:
            assert node.cluster_info()["cluster_state"] == "ok"
        # A hash tag puts names in one slot, whatever follows it.
        assert cluster.keyslot("{wsfleet}:bus") == cluster.keyslot("{wsfleet}:node:x")
        assert command(cluster.master_for("{wsfleet}").port, "SET", "{wsfleet}:k", "v") == "OK"
        pids = [node.pid for node in cluster.nodes]
        dirs = [Path(node.directory) for node in cluster.nodes if node.directory]
        assert len(dirs) == 6
        assert all((d / "nodes.conf").exists() for d in dirs)
        ports = cluster.ports
    assert not any(_alive(pid) for pid in pids if pid is not None)
    assert not any(d.exists() for d in dirs)
    assert not any(ping(port, timeout=0.2) for port in ports)


@pytest.mark.slow  # a failover
def test_a_killed_master_is_replaced_by_its_replica() -> None:
    with running_redis_cluster() as cluster:
        old = cluster.master_for("{wsfleet}")
        replica = cluster.shard_for("{wsfleet}").replicas[0]
        cluster.kill(old)
        assert not old.running
        new = cluster.wait_for_failover(old)
        assert new.port == replica
        assert cluster.master_for("{wsfleet}").port == replica


@pytest.mark.slow  # a failover
def test_a_sentinel_setup_promotes_the_replica_and_leaves_nothing() -> None:
    with running_redis_sentinel() as setup:
        assert setup.named_primary() == setup.primary.port
        servers = [setup.primary, setup.replica, setup.sentinel]
        pids = [server.pid for server in servers]
        setup.kill_primary()
        setup.wait_for_failover()
        assert setup.named_primary() == setup.replica.port
    assert not any(_alive(pid) for pid in pids if pid is not None)


def test_without_redis_cli_the_cluster_says_why(tmp_path: Path) -> None:
    """Only redis-server on PATH: a clear error (and the tests' helper skips with it)."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    (tmp_path / "redis-server").symlink_to(server)
    saved = os.environ["PATH"]
    os.environ["PATH"] = str(tmp_path)
    try:
        with pytest.raises(RedisServerError, match="redis-cli not installed"):
            RedisCluster()
    finally:
        os.environ["PATH"] = saved
