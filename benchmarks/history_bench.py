"""What keeping a group's history costs, and how fast a client recovers what it missed.

    python benchmarks/history_bench.py [--quick | --smoke]
        # writes benchmarks/results/history.md and history.json (--smoke: nothing)

Measures, on asyncio and trio, with in-memory transports (no network to the clients):
* ``send_to_group`` to a group of ``members`` connections: µs per call for a plain group,
  for a group keeping history in memory, and for one keeping it in Redis (a throw-away
  ``redis-server`` on loopback: one script per message, and the node hearing it back), each
  from the call until every member's transport has the message;
* ``recover`` of ``missed`` messages: ms from the call until the recovering transport has
  them all, from memory and from Redis (the client missed them on another node).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import cli, table
from _harness.redis import RedisServer
from wsfleet import ConnectionManager, HistoryPolicy
from wsfleet.testing import MemoryTransport


@dataclass(frozen=True)
class Config:
    backends: tuple[str, ...] = ("asyncio", "trio")
    members: int = 100
    sends: int = 2_000
    missed: int = 1_000
    recoveries: int = 5
    redis: bool = True


FULL = Config()
QUICK = Config(sends=500, recoveries=3)
SMOKE = Config(members=5, sends=20, missed=50, recoveries=1)


def manager(kind: str, redis_url: str | None, size: int) -> ConnectionManager:
    policy = HistoryPolicy(size=size, ttl=600)
    if kind == "plain":
        return ConnectionManager(heartbeat=None)
    if kind == "memory":
        return ConnectionManager(heartbeat=None, history=policy)
    from wsfleet.adapters.redis_history import RedisHistory

    assert redis_url is not None
    return ConnectionManager(heartbeat=None, history=policy, history_store=RedisHistory(redis_url))


async def until_sent(m: ConnectionManager, target: int) -> None:
    while m.stats().sent_messages < target:
        await anyio.lowlevel.checkpoint()


async def send_cost(kind: str, config: Config, redis_url: str | None) -> float:
    """µs per ``send_to_group``, until every member has the message."""
    async with manager(kind, redis_url, max(config.missed, 100)) as m:
        for i in range(config.members):
            m.register(MemoryTransport(), f"user-{i}")
            m.add_to_group(f"user-{i}", f"room-{kind}")
        group = f"room-{kind}"
        await m.send_to_group(group, "warm-up")
        await until_sent(m, config.members)
        sent = m.stats().sent_messages
        started = time.perf_counter()
        for n in range(config.sends):
            await m.send_to_group(group, f"message {n}")
        await until_sent(m, sent + config.sends * config.members)
        return (time.perf_counter() - started) / config.sends * 1e6


async def recovery_time(kind: str, config: Config, redis_url: str | None, round_: int) -> float:
    """ms to recover ``missed`` messages sent while the client was away (on the other node,
    with Redis), until its transport has them all."""
    group = f"recover-{kind}-{round_}"
    async with (
        manager(kind, redis_url, config.missed + 10) as sender,
        manager(kind, redis_url, config.missed + 10) as other,
    ):
        here = sender if kind == "memory" else other
        since = (await sender.send_to_group(group, "before")).position
        assert since is not None
        for n in range(config.missed):
            await sender.send_to_group(group, f"missed {n}")
        client = MemoryTransport()
        here.register(client, "client")
        here.add_to_group("client", group)
        started = time.perf_counter()
        replayed = await here.recover(client, group, since=since)
        while len(client.received) < config.missed:
            await anyio.lowlevel.checkpoint()
        took = (time.perf_counter() - started) * 1e3
        assert replayed == config.missed, replayed
        return took


async def ping_us(redis_url: str, rounds: int) -> float:
    """µs per PING through coredis: the floor under any Redis-backed send."""
    import coredis

    async with coredis.Redis.from_url(redis_url) as client:
        started = time.perf_counter()
        for _ in range(rounds):
            await client.ping()
        return (time.perf_counter() - started) / rounds * 1e6


async def on_one_loop(config: Config, redis_url: str | None) -> dict[str, Any]:
    kinds = ["plain", "memory"] + (["redis"] if redis_url else [])
    out: dict[str, Any] = {"send_us": {}, "recover_ms": {}, "load": os.getloadavg()[0]}
    if redis_url:
        out["redis_ping_us"] = await ping_us(redis_url, config.sends)
    for kind in kinds:
        out["send_us"][kind] = await send_cost(kind, config, redis_url)
    for kind in kinds[1:]:
        times = [await recovery_time(kind, config, redis_url, r) for r in range(config.recoveries)]
        out["recover_ms"][kind] = sorted(times)[len(times) // 2]
    return out


def measure(config: Config) -> dict[str, Any]:
    results: dict[str, Any] = {"config": asdict(config)}
    if config.redis:
        with RedisServer() as redis:
            for backend in config.backends:
                results[backend] = anyio.run(on_one_loop, config, redis.url, backend=backend)
    else:
        for backend in config.backends:
            results[backend] = anyio.run(on_one_loop, config, None, backend=backend)
    return results


def render(results: dict[str, Any]) -> str:
    config = results["config"]
    rows = []
    for backend in config["backends"]:
        r = results[backend]
        send, recover = r["send_us"], r["recover_ms"]
        rows.append(
            (
                backend,
                f"{send['plain']:.1f}",
                f"{send['memory']:.1f} ({send['memory'] - send['plain']:+.1f})",
                f"{send['redis']:.1f} ({send['redis'] - send['plain']:+.1f})"
                if "redis" in send
                else "-",
                f"{recover['memory']:.1f}",
                f"{recover['redis']:.1f}" if "redis" in recover else "-",
                f"{r['redis_ping_us']:.0f}" if "redis_ping_us" in r else "-",
                f"{r['load']:.1f}",
            )
        )
    members, missed = config["members"], config["missed"]
    body = table(
        [
            "loop",
            f"send_to_group µs, plain group ({members} members)",
            "keeping history in memory (extra)",
            "keeping history in Redis (extra)",
            f"recover {missed:,} missed, ms (memory)",
            f"recover {missed:,} missed, ms (Redis, on another node)",
            "coredis PING µs (the floor)",
            "load average",
        ],
        rows,
    )
    body += (
        "\n\nEach send is timed from the call until every member's transport has the message "
        f"(mean over {config['sends']:,} sends). With Redis, a send is one script (epoch, "
        "offset, XADD with MAXLEN ~, PUBLISH) and the wait for this node to hear it back: a "
        "round trip or two to a loopback redis-server. A recovery is timed from the call "
        f"until the client's transport has all {missed:,} messages (median of "
        f"{config['recoveries']} runs). A PING through the same client library is the floor "
        "under any Redis-backed send; the load average says how busy the machine was.\n"
    )
    return body


def main() -> None:
    parser = cli.parser(__doc__)
    args = parser.parse_args()
    config = SMOKE if args.smoke else QUICK if args.quick else FULL
    cli.run(
        args,
        config,
        measure,
        render,
        name="history",
        title="Group history: cost per message, and recovery time",
        script="history_bench.py",
    )


if __name__ == "__main__":
    main()
