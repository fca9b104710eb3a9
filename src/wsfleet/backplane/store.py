"""What a backplane's store provides: a publish/subscribe bus and membership records.

A store for another engine subclasses ``Store`` and ``StoreSession``, importing them from
``wsfleet.backplane``, and hands the store to a ``Backplane``, which does the rest: the
link's lifecycle and retries, numbering and counting the sends, membership, leases. The
Redis store (``wsfleet.adapters.redis``) and the in-process ``InMemoryHub`` are two such.

The contract, as the backplane uses it:

* ``Store.session()`` is entered once per connected life of the link. An exception from it,
  or from any operation of its session, ends that life: the link goes to ERROR and, after
  its retry policy's delay, enters a new session. So a store reports a failure at once and
  does not retry behind the backplane's back. The backplane bounds each operation of a
  session by its ``op_timeout`` (cancelling it then); connecting is the store's to bound.
* ``subscribe()`` is entered once per session, before anything is published in it. It yields
  every message published on the bus from then on, this node's own included, as the bytes
  that were published. It must not end while the session lives: a lost subscription raises.
* Records: per node, identifier -> its groups (and its presence metadata, if any), and a
  lease. A node's records vanish with its lease when the lease lapses (``live_nodes`` stops
  listing it, ``load`` finds nothing). A store that keeps no metadata may leave ``meta``
  and ``metas`` aside and not override ``load_record``: the other nodes then learn an
  identity's metadata from its announcements only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

__all__ = ["Store", "StoreSession"]


class Store(ABC):
    """The shared medium of a backplane: a publish/subscribe bus and membership records."""

    @abstractmethod
    def session(self) -> AbstractAsyncContextManager[StoreSession]:
        """Connect; the session is usable until the block exits or an operation fails."""


class StoreSession(ABC):
    """One connection to the store, for one connected life of a node's link."""

    @abstractmethod
    async def publish(self, data: bytes) -> int | None:
        """Publish ``data`` to every subscriber; how many received it (this node's own
        subscription included), as Redis's ``PUBLISH`` answers, or ``None`` if the store
        cannot tell (then no message is counted as missed by a node)."""

    async def publish_many(self, data: list[bytes]) -> list[int | None]:
        """Publish several messages in order, in as few round trips as the store allows;
        ``publish``'s answer for each. If it raises, any of them may or may not be out."""
        return [await self.publish(item) for item in data]

    @abstractmethod
    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Messages published by any node (this one included), from now on."""

    @abstractmethod
    async def put_member(
        self,
        node: str,
        identifier: str,
        groups: list[str],
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Record that ``identifier`` has sockets on ``node``, in ``groups``, with ``meta``
        (its presence metadata there; ``None``: none)."""

    @abstractmethod
    async def del_member(self, node: str, identifier: str) -> None:
        """Remove ``identifier`` from ``node``'s record (it has no socket there now)."""

    @abstractmethod
    async def replace_node(
        self,
        node: str,
        snapshot: Mapping[str, list[str]],
        ttl: float,
        *,
        metas: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Make ``snapshot`` (identifier -> groups) the whole of ``node``'s record, with
        ``metas`` (identifier -> its metadata, for those that have some), and give it a
        lease of ``ttl`` seconds (after a reconnection: the store may have lost it)."""

    @abstractmethod
    async def beat(self, node: str, ttl: float) -> None:
        """Extend ``node``'s lease on its records by ``ttl`` seconds from now."""

    @abstractmethod
    async def live_nodes(self) -> set[str]:
        """The nodes whose lease has not lapsed (this one included)."""

    @abstractmethod
    async def load(self, node: str) -> dict[str, list[str]]:
        """``node``'s record: identifier -> groups; empty if it has none."""

    async def load_record(self, node: str) -> tuple[dict[str, list[str]], dict[str, object]]:
        """``node``'s record and the metadata in it (identifier -> metadata as stored, which
        the backplane checks). By default ``load`` and no metadata."""
        return await self.load(node), {}

    @abstractmethod
    async def forget(self, node: str) -> None:
        """Remove ``node``'s records and lease at once (a clean shutdown)."""
