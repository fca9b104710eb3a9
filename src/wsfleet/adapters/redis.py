"""The Redis backplane, over coredis (anyio-based: runs on asyncio and on trio).

    from wsfleet.adapters.redis import RedisBackplane
    async with ConnectionManager(backplane=RedisBackplane("redis://127.0.0.1:6379/0")) as m:
        ...

What lives in Redis, for a namespace ``ns`` (``"wsfleet"`` by default):

* ``ns:bus``, a pub/sub channel: every fan-out for the other nodes and every membership
  change, as versioned JSON (see ``wsfleet.backplane.wire``; never pickle);
* ``ns:nodes``, a sorted set: node id -> the time (seconds since the epoch) its lease ends;
* ``ns:node:<id>``, a hash per node: identifier -> JSON list of its groups, for every
  identifier with sockets on that node, followed by one JSON object, its presence
  metadata, when it has some (a node that predates metadata skips the object and keeps
  the groups). It carries the same lease as a TTL.

A node extends its lease every ``heartbeat_interval`` (2 s) by ``node_ttl`` (6 s); a node
that stops (SIGKILL included) has its hash expire and its entry in ``ns:nodes`` skipped and
pruned by the others, so it leaves every node's view within ``node_ttl + heartbeat_interval``
(8 s by default; the contract is 15 s at most), with nothing to do for anyone.

Nothing read from Redis is trusted further than a node's own messages would be: names
wsfleet could not have written are skipped (``_name``), and what is read is bounded: at most
``max_nodes`` node ids, ``max_records`` identifiers per node, a record's groups in at most
``MAX_RECORD_BYTES``. Whoever can write the keys can still make a node believe in records
(see docs/howto/security.md); they cannot make it read without end.

Redis Cluster: pass ``cluster=True`` (and a cluster node's URL). Publishing then uses sharded
pub/sub (``SPUBLISH``/``SSUBSCRIBE``, Redis 7) so a message goes to one shard only; the
per-node hashes and the node set are ordinary keys, which the cluster client routes.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from ..backplane import DEFAULT_MAX_MESSAGE_SIZE, Backplane, Store, StoreSession
from ..backplane.view import DEFAULT_MAX_NODES, DEFAULT_MAX_RECORDS
from ..policies.retry import RetryPolicy

try:
    import coredis
    from coredis.retry import NoRetryPolicy
    from coredis.tokens import PureToken
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without the extra
    raise ImportError("wsfleet.adapters.redis needs coredis: pip install 'wsfleet[redis]'") from exc

__all__ = ["MAX_RECORD_BYTES", "RedisBackplane", "RedisStore"]

#: The most bytes of one identifier's record (the JSON list of its groups) a node reads.
MAX_RECORD_BYTES = 64 * 1024
#: Fields of a node's hash read per round trip when it holds more than a node may load.
_SCAN_COUNT = 1000


def _valid(name: str) -> bool:
    """A name wsfleet could have written: what the manager accepts for identifiers."""
    return 0 < len(name) <= 256 and name.isprintable()


def _name(raw: object) -> str | None:
    """A node id or identifier read back from Redis; ``None`` for anything wsfleet would not
    have written there (bytes that are not UTF-8, control characters, too long).

    Whoever can write to the namespace's keys could plant such a record; read as it came,
    it would fail every node's link, over and over, for as long as the key exists.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode()
        except UnicodeDecodeError:
            return None
    return raw if isinstance(raw, str) and _valid(raw) else None


def _record(groups: list[str], meta: Mapping[str, Any] | None) -> str:
    """An identifier's record: its groups, then its metadata if it has some."""
    return json.dumps([*groups, dict(meta)] if meta else groups)


class RedisStore(Store):
    """Connects to Redis for one backplane link; see the module docstring for the keys."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "wsfleet",
        cluster: bool = False,
        connect_timeout: float = 1.0,
        command_timeout: float = 1.0,
        max_nodes: int = DEFAULT_MAX_NODES,
        max_records: int = DEFAULT_MAX_RECORDS,
        **client_options: Any,
    ) -> None:
        self.url = url
        self.namespace = namespace
        self.cluster = cluster
        #: The most node ids ``live_nodes`` reads (this node's own among them).
        self.max_nodes = max_nodes
        #: The most identifiers ``load`` reads of one node.
        self.max_records = max_records
        self.client_options: dict[str, Any] = {
            "connect_timeout": connect_timeout,
            "stream_timeout": command_timeout,
            **client_options,
        }

    @asynccontextmanager
    async def session(self) -> AsyncIterator[StoreSession]:
        factory: Any = coredis.RedisCluster if self.cluster else coredis.Redis
        # The backplane's link has its own retry policy and state machine: coredis must
        # report a failure at once instead of retrying behind its back.
        client = factory.from_url(self.url, retry_policy=NoRetryPolicy(), **self.client_options)
        async with client:
            await client.ping()
            yield _RedisSession(self, client)


class _RedisSession(StoreSession):
    def __init__(self, store: RedisStore, client: Any) -> None:
        self.client = client
        self.cluster = store.cluster
        ns = store.namespace
        self.channel = f"{ns}:bus"
        self.nodes_key = f"{ns}:nodes"
        self.prefix = f"{ns}:node:"
        self.max_nodes = store.max_nodes
        self.max_records = store.max_records

    async def publish(self, data: bytes) -> int:
        if self.cluster:
            receivers: int = await self.client.spublish(self.channel, data)
        else:
            receivers = await self.client.publish(self.channel, data)
        return receivers

    async def publish_many(self, data: list[bytes]) -> list[int | None]:
        if self.cluster or len(data) == 1:
            return [await self.publish(item) for item in data]
        # One round trip for the lot (no MULTI: a pipeline, not a transaction).
        async with self.client.pipeline(transaction=False) as pipe:
            requests = [pipe.publish(self.channel, item) for item in data]
        return [await request for request in requests]

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[bytes]]:
        if self.cluster:
            pubsub = self.client.sharded_pubsub(channels=[self.channel], retry_policy=None)
        else:
            pubsub = self.client.pubsub(channels=[self.channel], retry_policy=None)
        async with pubsub:
            yield self._messages(pubsub)

    async def _messages(self, pubsub: Any) -> AsyncIterator[bytes]:
        async for message in pubsub:
            if message["type"] in ("message", "smessage"):
                data = message["data"]
                yield data if isinstance(data, bytes) else str(data).encode()
        raise ConnectionError("the subscription ended")

    async def put_member(
        self,
        node: str,
        identifier: str,
        groups: list[str],
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        await self.client.hset(self.prefix + node, {identifier: _record(groups, meta)})

    async def del_member(self, node: str, identifier: str) -> None:
        await self.client.hdel(self.prefix + node, [identifier])

    async def replace_node(
        self,
        node: str,
        snapshot: Mapping[str, list[str]],
        ttl: float,
        *,
        metas: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        key = self.prefix + node
        metas = metas or {}
        await self.client.delete([key])
        if snapshot:
            records = {k: _record(v, metas.get(k)) for k, v in snapshot.items()}
            await self.client.hset(key, records)
        await self.beat(node, ttl)

    async def beat(self, node: str, ttl: float) -> None:
        await self.client.zadd(self.nodes_key, {node: time.time() + ttl})
        await self.client.pexpire(self.prefix + node, int(ttl * 1000))

    async def live_nodes(self) -> set[str]:
        now = time.time()
        await self.client.zremrangebyscore(self.nodes_key, "-inf", now)
        # ZRANGE ... BYSCORE (Redis 6.2): coredis deprecates ZRANGEBYSCORE with a warning.
        # The leases that end first: a node renews its own by ``node_ttl`` at a time, so a
        # lease planted far ahead cannot push a real node out. One more than the others
        # may be: this node's own.
        nodes = await self.client.zrange(
            self.nodes_key,
            now,
            "+inf",
            sortby=PureToken.BYSCORE,
            offset=0,
            count=self.max_nodes + 1,
        )
        return {name for name in map(_name, nodes) if name is not None}

    async def load(self, node: str) -> dict[str, list[str]]:
        snapshot, _ = await self.load_record(node)
        return snapshot

    async def load_record(self, node: str) -> tuple[dict[str, list[str]], dict[str, object]]:
        key = self.prefix + node
        raw: dict[Any, Any]
        if await self.client.hlen(key) <= self.max_records:
            raw = await self.client.hgetall(key)
        else:  # more than any node may hold: the first ``max_records``, a page at a time
            raw = {}
            cursor = None
            while cursor != 0 and len(raw) < self.max_records:
                cursor, page = await self.client.hscan(key, cursor, count=_SCAN_COUNT)
                raw.update(page)
        snapshot: dict[str, list[str]] = {}
        metas: dict[str, object] = {}
        for field, value in raw.items():
            name = _name(field)
            if name is None:
                continue  # not ours: skipped, like a malformed message on the bus
            if len(snapshot) == self.max_records or len(value) > MAX_RECORD_BYTES:
                continue
            try:
                groups = json.loads(value)
            except (ValueError, RecursionError):
                continue
            if isinstance(groups, list):
                snapshot[name] = [g for g in groups if isinstance(g, str) and _valid(g)]
                if groups and isinstance(groups[-1], dict):
                    metas[name] = groups[-1]  # checked by the backplane
        return snapshot, metas

    async def forget(self, node: str) -> None:
        await self.client.zrem(self.nodes_key, [node])
        await self.client.delete([self.prefix + node])


def RedisBackplane(
    url: str,
    *,
    namespace: str = "wsfleet",
    node_id: str | None = None,
    retry_policy: RetryPolicy | None = None,
    heartbeat_interval: float = 2.0,
    node_ttl: float = 6.0,
    buffer: int = 0,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    cluster: bool = False,
    secrets: bytes | str | Sequence[bytes | str] | None = None,
    max_nodes: int = DEFAULT_MAX_NODES,
    max_records: int = DEFAULT_MAX_RECORDS,
    **client_options: Any,
) -> Backplane:
    """A ``Backplane`` over Redis at ``url``; every process of one fleet uses the same
    ``namespace``. ``buffer`` keeps up to that many cross-node messages while Redis is down
    (0: drop and count them). ``max_message_size`` bounds one envelope on the bus (4 MiB):
    a larger message is refused before anything is queued, as a subscriber whose output
    buffer passes Redis' ``client-output-buffer-limit pubsub`` is disconnected. Every node
    of a fleet should use the same bound. ``secrets`` signs every envelope and refuses any
    not signed with one of these keys (see ``Backplane``; one key, or two while changing
    keys). ``max_nodes`` and ``max_records`` bound what a node keeps of the others (see
    ``Backplane``) and reads of them from Redis. ``client_options`` go to the coredis
    client."""
    store = RedisStore(
        url,
        namespace=namespace,
        cluster=cluster,
        max_nodes=max_nodes,
        max_records=max_records,
        **client_options,
    )
    return Backplane(
        store,
        namespace=namespace,
        node_id=node_id,
        retry_policy=retry_policy,
        heartbeat_interval=heartbeat_interval,
        node_ttl=node_ttl,
        buffer=buffer,
        max_message_size=max_message_size,
        secrets=secrets,
        max_nodes=max_nodes,
        max_records=max_records,
    )
