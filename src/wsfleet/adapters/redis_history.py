"""Groups' history in Redis Streams, shared by every node of a fleet (over coredis).

    from wsfleet.adapters.redis_history import RedisHistory
    manager = ConnectionManager(history=HistoryPolicy(size=1000, ttl=600),
                                history_store=RedisHistory("redis://127.0.0.1:6379/0"))

What lives in Redis, for a namespace ``ns`` (``"wsfleet"`` by default) and a group ``g``:

* ``{ns:g}:stream``, a stream: the group's kept messages, stream id ``<offset>-1``, fields
  ``m`` (the message: text, or base64 for bytes), ``k`` (``t`` or ``b``), ``t`` (when);
* ``{ns:g}:meta``, a hash: the group's ``epoch`` and its last ``offset``;
* ``ns:history``, a pub/sub channel: each message as it is kept, for every node.

The braces are a Redis Cluster hash tag: a group's two keys share a slot, so one script can
touch both. One script (``_APPEND``) makes the epoch if there is none (a flushed or expired
history gets a new one), takes the next offset, adds the message with ``MAXLEN ~ size``,
extends both keys' life by ``ttl`` and publishes the message, atomically: a message is in
the history if and only if it was announced, and every node hears the announcements in the
order the history holds them. Each node, the sender included, delivers what it hears.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Collection
from secrets import token_hex
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from ..errors import TransportError
from ..policies.history import HistoryPolicy, Position
from ..transport import Message

try:
    import coredis
    from coredis.retry import NoRetryPolicy
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without the extra
    raise ImportError(
        "wsfleet.adapters.redis_history needs coredis: pip install 'wsfleet[redis]'"
    ) from exc

__all__ = ["RedisHistory"]

logger = logging.getLogger("wsfleet.history")

#: What a lost (or closing) subscription raises.
_LOST = (
    coredis.exceptions.RedisError,
    OSError,
    ConnectionError,
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
)

_APPEND = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'offset', 0)
end
local offset = redis.call('HINCRBY', KEYS[2], 'offset', 1)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], offset .. '-1',
           'm', ARGV[3], 'k', ARGV[4], 't', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('PUBLISH', ARGV[7], cjson.encode({g = ARGV[8], e = epoch, o = offset,
           m = ARGV[3], k = ARGV[4], x = ARGV[9], n = ARGV[10]}))
return {epoch, offset}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _encode(message: Message) -> tuple[str, str]:
    if isinstance(message, str):
        return message, "t"
    return base64.b64encode(bytes(message)).decode(), "b"


def _decode(data: str, kind: str) -> Message:
    return base64.b64decode(data) if kind == "b" else data


class RedisHistory:
    """A ``HistoryStore`` over Redis at ``url``; see the module docstring for the keys.

    Every node of a fleet uses the same ``url`` and ``namespace``. ``reconnect_delay`` is
    the pause before this node listens again after losing its subscription (what was
    announced meanwhile stays recoverable from the stream)."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "wsfleet",
        cluster: bool = False,
        connect_timeout: float = 1.0,
        command_timeout: float = 1.0,
        reconnect_delay: float = 0.5,
        **client_options: Any,
    ) -> None:
        self.url = url
        self.namespace = namespace
        self.channel = f"{namespace}:history"
        self.cluster = cluster
        self.reconnect_delay = reconnect_delay
        self.client_options: dict[str, Any] = {
            "connect_timeout": connect_timeout,
            "stream_timeout": command_timeout,
            **client_options,
        }
        self._client: Any = None
        self._script: Any = None

    def keys(self, group: str) -> tuple[str, str]:
        """The group's stream and its meta hash (one hash tag: one Cluster slot)."""
        tag = f"{{{self.namespace}:{group}}}"
        return f"{tag}:stream", f"{tag}:meta"

    def _connect(self) -> Any:
        if self._client is None:
            raise TransportError("the history store is not connected (its manager is not running)")
        return self._client

    async def append(
        self,
        group: str,
        message: Message,
        policy: HistoryPolicy,
        skip: Collection[str],
        origin: str,
    ) -> Position:
        data, kind = _encode(message)
        self._connect()
        try:
            epoch, offset = await self._script(
                keys=list(self.keys(group)),
                args=[
                    token_hex(8),
                    policy.size,
                    data,
                    kind,
                    repr(time.time()),
                    max(1, int(policy.ttl * 1000)),
                    self.channel,
                    group,
                    json.dumps(list(skip)),
                    origin,
                ],
            )
        except (coredis.exceptions.RedisError, OSError) as exc:
            raise TransportError(f"the history store failed: {exc}") from exc
        return Position(_text(epoch), int(offset))

    async def read(
        self, group: str, after: int, policy: HistoryPolicy
    ) -> tuple[str | None, list[tuple[int, Message]]]:
        stream, meta = self.keys(group)
        client = self._connect()
        try:
            epoch = await client.hget(meta, "epoch")
            entries = await client.xrange(stream, f"{after + 1}-0", "+")
        except (coredis.exceptions.RedisError, OSError) as exc:
            raise TransportError(f"the history store failed: {exc}") from exc
        oldest = time.time() - policy.ttl
        kept: list[tuple[int, Message]] = []
        for entry in entries:
            values = {_text(k): _text(v) for k, v in entry.field_values.items()}
            if float(values.get("t", "0")) <= oldest:
                continue  # outlived the policy's ttl: as good as gone
            offset = int(_text(entry.identifier).split("-", 1)[0])
            kept.append((offset, _decode(values["m"], values["k"])))
        return (None if epoch is None else _text(epoch)), kept

    async def run(
        self, arrived: Any, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, then hear the announcements and hand each to ``arrived`` for as long as
        the manager runs; a lost subscription is taken again after ``reconnect_delay``.
        One ``RedisHistory`` serves one manager."""
        factory: Any = coredis.RedisCluster if self.cluster else coredis.Redis
        client = factory.from_url(self.url, retry_policy=NoRetryPolicy(), **self.client_options)
        async with client:
            self._client = client
            self._script = client.register_script(_APPEND)  # EVALSHA, EVAL once if unknown
            try:
                await self._listen(client, arrived, task_status)
            finally:
                self._client = None

    async def _listen(
        self, client: Any, arrived: Any, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        started = False
        while True:
            try:
                async with client.pubsub(channels=[self.channel], retry_policy=None) as pubsub:
                    if not started:
                        started = True
                        task_status.started()
                    async for message in pubsub:
                        if message["type"] == "message":
                            await self._hand(message["data"], arrived)
            except BaseException as exc:
                why = _why(exc)
                await anyio.lowlevel.checkpoint_if_cancelled()  # closing: no warning
                logger.warning("history subscription lost (%r); listening again soon", why)
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(self.reconnect_delay)

    async def _hand(self, raw: Any, arrived: Any) -> None:
        try:
            note = json.loads(raw)
            group, epoch, offset = note["g"], str(note["e"]), int(note["o"])
            message = _decode(note["m"], note["k"])
            skip = json.loads(note["x"])
            origin = note["n"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("a malformed history announcement was skipped: %s", exc)
            return
        try:
            await arrived(group, epoch, offset, message, skip, origin)
        except Exception:
            # Anyone who can publish on the channel can send anything: what one announcement
            # does must not end the subscription, and with it every node's history.
            logger.exception("a history announcement could not be applied; skipped")


def _why(exc: BaseException) -> BaseException:
    """What ended a subscription: a lost link is returned (to be logged, and the
    subscription taken again); a cancellation goes on up, whatever the client's teardown
    added to its group, as does any other error."""
    if isinstance(exc, BaseExceptionGroup):
        cancelled, rest = exc.split(anyio.get_cancelled_exc_class())
        if cancelled is not None:
            raise cancelled
        while isinstance(rest, BaseExceptionGroup) and rest.exceptions:
            rest = rest.exceptions[0]  # the task that failed first says why
        assert rest is not None
        exc = rest
    if isinstance(exc, _LOST):
        return exc
    raise exc
