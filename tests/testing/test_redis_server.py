"""Quick sync checks of the throw-away redis-server helper (tests/redis_server.py)."""

from __future__ import annotations

import socket

import pytest

from redis_server import RedisServer, ping, redis_binary


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_starts_on_loopback_and_answers_ping(redis: RedisServer) -> None:
    assert redis.running
    assert redis.port != 6379
    assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
    assert ping(redis.port)


def test_kill_then_start_on_the_same_port(redis: RedisServer) -> None:
    port, pid = redis.port, redis.pid
    redis.kill()
    assert not redis.running
    assert not ping(redis.port, timeout=0.2)
    redis.start()
    assert redis.port == port
    assert redis.pid != pid
    assert ping(redis.port)


def test_restart_keeps_the_port(redis: RedisServer) -> None:
    port = redis.port
    redis.restart()
    assert redis.port == port
    assert ping(redis.port)


def test_stop_frees_the_port(redis: RedisServer) -> None:
    port = redis.port
    redis.stop()
    assert not redis.running
    assert not ping(port, timeout=0.2)
    assert _port_is_free(port)


def test_two_servers_get_distinct_ports() -> None:
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with RedisServer() as one, RedisServer() as two:
        assert one.port != two.port
        assert ping(one.port)
        assert ping(two.port)
