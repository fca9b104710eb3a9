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

Redis Cluster: pass ``cluster=True`` and a cluster node's URL (more nodes in
``startup_nodes``). The names then carry a hash tag, ``{ns}:bus``, ``{ns}:nodes`` and
``{ns}:node:<id>``, so that a namespace lives in one slot, on one shard: a node's record and
the node set change together in one ``MULTI``/``EXEC``, and one pipeline reaches one node.
Publishing uses sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``, Redis 7): a message goes to
that shard's nodes only, not to the whole cluster as ``PUBLISH`` would. When the shard's
master fails, the subscription and the commands fail with it; the link's retries start a
new session, which finds the replica that took over. ``RedisStore.key`` names further keys
(the history of another module) on the same slot.

Redis Sentinel: pass ``sentinels=[(host, port), ...]`` and ``service``; each session asks
the Sentinels for the primary of ``service`` (coredis' ``Sentinel.primary_for``), so the
session after a failover reaches the promoted replica. The URL gives the credentials, the
database and TLS.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio

from ..backplane import DEFAULT_MAX_MESSAGE_SIZE, Backplane, Store, StoreSession
from ..backplane.view import DEFAULT_MAX_NODES, DEFAULT_MAX_RECORDS
from ..policies.retry import RetryPolicy

try:
    import coredis
    from coredis.connection import TCPLocation
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


def _address(node: object) -> tuple[str, int]:
    """A cluster node as ``startup_nodes`` may give it: ``(host, port)``, coredis'
    ``TCPLocation``, or a mapping with ``host`` and ``port``."""
    if isinstance(node, TCPLocation):
        return node.host, node.port
    if isinstance(node, Mapping):
        return str(node["host"]), int(node["port"])
    if isinstance(node, tuple) and len(node) == 2:
        return str(node[0]), int(node[1])
    raise TypeError(f"a startup node is (host, port), not {node!r}")


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
        sentinels: Sequence[tuple[str, int]] = (),
        service: str | None = None,
        connect_timeout: float = 1.0,
        command_timeout: float = 1.0,
        max_nodes: int = DEFAULT_MAX_NODES,
        max_records: int = DEFAULT_MAX_RECORDS,
        **client_options: Any,
    ) -> None:
        if sentinels and cluster:
            raise ValueError("Sentinel or Redis Cluster, not both: drop sentinels or cluster")
        if bool(sentinels) != (service is not None):
            raise ValueError(
                "Sentinel needs both sentinels=[(host, port), ...] and service='<name>' "
                "(the name Sentinel monitors the primary by)"
            )
        self.url = url
        self.namespace = namespace
        self.cluster = cluster
        #: Sentinel: where to ask for the primary of ``service`` at each session.
        self.sentinels = [_address(node) for node in sentinels]
        self.service = service
        #: The most node ids ``live_nodes`` reads (this node's own among them).
        self.max_nodes = max_nodes
        #: The most identifiers ``load`` reads of one node.
        self.max_records = max_records
        #: Cluster nodes to start a session from: the URL's, those given, and every node
        #: the last session saw (so that losing the URL's node to a failover costs nothing).
        self._startup_nodes: list[tuple[str, int]] = []
        if cluster:
            given = client_options.pop("startup_nodes", None) or []
            parts = urlsplit(url)
            nodes = [(parts.hostname or "127.0.0.1", parts.port or 6379)]
            nodes += [_address(node) for node in given]
            self._learn(nodes)
        elif "startup_nodes" in client_options:
            raise ValueError("startup_nodes is for Redis Cluster: pass cluster=True")
        self.client_options: dict[str, Any] = {
            "connect_timeout": connect_timeout,
            "stream_timeout": command_timeout,
            **client_options,
        }

    def key(self, name: str) -> str:
        """The Redis name of ``name`` in this namespace: ``ns:name``, or ``{ns}:name`` on a
        cluster, where the hash tag puts every name of a namespace in one slot (so one
        transaction or pipeline may touch several)."""
        return f"{{{self.namespace}}}:{name}" if self.cluster else f"{self.namespace}:{name}"

    def _learn(self, nodes: Sequence[tuple[str, int]]) -> None:
        for node in nodes:
            if node not in self._startup_nodes:
                self._startup_nodes.append(node)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[StoreSession]:
        # The backplane's link has its own retry policy and state machine: coredis must
        # report a failure at once instead of retrying behind its back.
        if self.sentinels:
            async with self._sentinel_session() as session:
                yield session
            return
        if not self.cluster:
            client = coredis.Redis.from_url(
                self.url, retry_policy=NoRetryPolicy(), **self.client_options
            )
            async with client:
                await client.ping()
                yield _RedisSession(self, client)
            return
        startup = [TCPLocation(host, port) for host, port in self._startup_nodes]
        # skip_full_coverage_check: else coredis sends CONFIG GET to every node at each
        # session (a connection to each, and CONFIG in the fleet's ACL) to learn whether the
        # cluster may serve with slots uncovered; this fleet needs its one slot only.
        options = {"skip_full_coverage_check": True, **self.client_options}
        cluster = coredis.RedisCluster.from_url(
            self.url, retry_policy=NoRetryPolicy(), startup_nodes=startup, **options
        )
        async with cluster:
            # Not PING, which a cluster client sends to every master (another shard's master
            # down would keep the link down): a read of the namespace's slot, on the master
            # that serves it, the one node this fleet needs.
            await cluster.exists([self.key("nodes")])
            self._learn([(n.host, n.port) for n in cluster.connection_pool.cluster_layout.nodes])
            yield _RedisSession(self, cluster)

    @asynccontextmanager
    async def _sentinel_session(self) -> AsyncIterator[StoreSession]:
        """The primary Sentinel names now, asked anew at each session: after a failover
        the link's next session finds the replica Sentinel promoted. The URL gives the
        primary's credentials, database and TLS; its host and port are not used."""
        assert self.service is not None
        parts = urlsplit(self.url)
        options: dict[str, Any] = {
            "username": parts.username,
            "password": parts.password,
            "db": int(parts.path.strip("/") or 0),
            **({"ssl": True} if parts.scheme == "rediss" else {}),
            **self.client_options,
        }
        sentinel_options = {
            k: v for k, v in options.items() if k in ("connect_timeout", "stream_timeout")
        }
        sentinel = coredis.Sentinel(
            [TCPLocation(host, port) for host, port in self.sentinels],
            sentinel_kwargs=sentinel_options,
            retry_policy=NoRetryPolicy(),
            **options,
        )
        async with sentinel:
            client = sentinel.primary_for(self.service)
            async with client:
                await client.ping()
                yield _RedisSession(self, client)


class _RedisSession(StoreSession):
    def __init__(self, store: RedisStore, client: Any) -> None:
        self.client = client
        self.cluster = store.cluster
        self.channel = store.key("bus")
        self.nodes_key = store.key("nodes")
        self.prefix = store.key("node:")
        self.subscription_timeout: float = store.client_options["stream_timeout"] or 1.0
        self.max_nodes = store.max_nodes
        self.max_records = store.max_records

    async def publish(self, data: bytes) -> int:
        if self.cluster:
            receivers: int = await self.client.spublish(self.channel, data)
        else:
            receivers = await self.client.publish(self.channel, data)
        return receivers

    async def publish_many(self, data: list[bytes]) -> list[int | None]:
        if len(data) == 1:
            return [await self.publish(item) for item in data]
        # One round trip for the lot (no MULTI: a pipeline, not a transaction); on a
        # cluster, the channel's one slot makes it one node's pipeline.
        async with self.client.pipeline(transaction=False) as pipe:
            if self.cluster:
                requests = [pipe.spublish(self.channel, item) for item in data]
            else:
                requests = [pipe.publish(self.channel, item) for item in data]
        return [await request for request in requests]

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[bytes]]:
        if self.cluster:
            async with self._sharded_subscription() as messages:
                yield messages
            return
        pubsub = self.client.pubsub(channels=[self.channel], retry_policy=None)
        async with pubsub:
            yield self._messages(pubsub)

    @asynccontextmanager
    async def _sharded_subscription(self) -> AsyncIterator[AsyncIterator[bytes]]:
        """``SSUBSCRIBE`` on one connection to the master of the channel's slot.

        Not coredis' ``sharded_pubsub()`` (6.9): it holds a connection to every master and
        never releases them (its exit stack is not closed), so each is left to the garbage
        collector, and trio logs an error for each. Here the one connection is closed on
        the way out, and anything but a message on the channel (``sunsubscribe``: the slot
        moved away) ends the session with an error, which the link's retries turn into a
        new session on the new topology.
        """
        pool = self.client.connection_pool
        slot = await self.client.cluster_keyslot(self.channel)
        node = pool.cluster_layout.node_for_slot(slot, primary=True)
        async with pool.acquire(node=node) as connection:
            try:
                connection.send_command(b"SSUBSCRIBE", self.channel)
                async with aclosing(connection.push_messages) as pushed:
                    with anyio.fail_after(self.subscription_timeout):
                        reply = await anext(pushed)
                    if not (isinstance(reply, list) and reply[:1] == [b"ssubscribe"]):
                        raise ConnectionError(f"SSUBSCRIBE answered {reply!r}")
                    yield self._shard_messages(pushed)
            finally:
                # Still subscribed: never back into the pool for commands.
                connection.invalidate()

    async def _shard_messages(self, pushed: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        channel = self.channel.encode()
        async for reply in pushed:
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"smessage":
                if reply[1] == channel:
                    data = reply[2]
                    yield data if isinstance(data, bytes) else str(data).encode()
                continue
            # sunsubscribe: the slot moved (a failover, a resharding); the session is over.
            raise ConnectionError(f"the sharded subscription ended: {reply!r}")
        raise ConnectionError("the subscription ended")

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
        # One transaction: no other node loads the record half rewritten (empty, after the
        # DEL), and the record never outlives its lease. The hash tag keeps both keys in
        # one slot, which a cluster requires of a transaction.
        key = self.prefix + node
        metas = metas or {}
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete([key])
            if snapshot:
                pipe.hset(key, {k: _record(v, metas.get(k)) for k, v in snapshot.items()})
            self._lease(pipe, node, ttl)

    async def beat(self, node: str, ttl: float) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            self._lease(pipe, node, ttl)

    def _lease(self, pipe: Any, node: str, ttl: float) -> None:
        pipe.zadd(self.nodes_key, {node: time.time() + ttl})
        pipe.pexpire(self.prefix + node, int(ttl * 1000))

    async def live_nodes(self) -> set[str]:
        now = time.time()
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(self.nodes_key, "-inf", now)
            # ZRANGE ... BYSCORE (Redis 6.2): coredis deprecates ZRANGEBYSCORE with a
            # warning. The leases that end first: a node renews its own by ``node_ttl`` at
            # a time, so a lease planted far ahead cannot push a real node out. One more
            # than the others may be: this node's own.
            request = pipe.zrange(
                self.nodes_key,
                now,
                "+inf",
                sortby=PureToken.BYSCORE,
                offset=0,
                count=self.max_nodes + 1,
            )
        nodes = await request
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
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(self.nodes_key, [node])
            pipe.delete([self.prefix + node])


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
    sentinels: Sequence[tuple[str, int]] = (),
    service: str | None = None,
    secrets: bytes | str | Sequence[bytes | str] | None = None,
    max_nodes: int = DEFAULT_MAX_NODES,
    max_records: int = DEFAULT_MAX_RECORDS,
    op_timeout: float = 2.0,
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
    ``Backplane``) and reads of them from Redis. ``op_timeout`` bounds each operation on
    Redis (see ``Backplane``; raise it for fleets whose records take long to load).
    ``client_options`` go to the coredis client.

    ``cluster=True``: ``url`` is a Redis Cluster node's (``startup_nodes=[(host, port),
    ...]`` adds others to start from). ``sentinels=[(host, port), ...]`` and ``service``:
    the primary is the one Sentinel names for ``service``, asked at every (re)connection;
    ``url`` then gives only its credentials, database and TLS."""
    store = RedisStore(
        url,
        namespace=namespace,
        cluster=cluster,
        sentinels=sentinels,
        service=service,
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
        op_timeout=op_timeout,
    )
