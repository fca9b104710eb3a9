"""``MemoryTransport``: a socket with no network behind it.

It records what the manager writes and can be told to behave like a real peer gone wrong:
slow (each write takes time), stalled (writes wait until ``resume()``), failing (writes
raise), or closed. It answers pings by itself unless told not to, as a healthy browser would.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from ..errors import TransportError
from ..transport import Message, Outbound, Ping, Transport

__all__ = ["MemoryTransport"]


class MemoryTransport(Transport):
    """A socket with no network behind it.

    ``sync=True`` (the default) lets the manager hand it batches without a task, as a real
    socket with room in its buffer does; ``sync=False`` forces the writer-task path.
    """

    def __init__(
        self,
        name: str = "memory",
        *,
        latency: float = 0.0,
        stalled: bool = False,
        fail_with: BaseException | None = None,
        auto_pong: bool = True,
        sync: bool = True,
    ) -> None:
        self.name = name
        self.latency = latency
        self.fail_with = fail_with
        self.auto_pong = auto_pong
        self.sync = sync
        #: Every message written, in order.
        self.received: list[Message] = []
        #: How many writes (batches) the manager made: fewer than messages means coalescing.
        self.writes = 0
        self.pings = 0
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._resumed: anyio.Event | None = None
        self._stalled = stalled

    def __repr__(self) -> str:
        return f"<MemoryTransport {self.name}>"

    @property
    def closed(self) -> bool:
        return self.close_code is not None

    @property
    def stalled(self) -> bool:
        return self._stalled

    def stall(self) -> None:
        """From now on writes wait (a peer that stopped reading) until ``resume()``."""
        self._stalled = True

    def resume(self) -> None:
        self._stalled = False
        if self._resumed is not None:
            self._resumed.set()
            self._resumed = None

    def send_nowait(self, batch: Sequence[Outbound]) -> bool:
        if not self.sync or self._stalled or self.latency or self.fail_with is not None:
            return False
        self._check_open()
        self._deliver(batch)
        return True

    async def send(self, batch: Sequence[Outbound]) -> None:
        self._check_open()
        while self._stalled:
            if self._resumed is None:
                self._resumed = anyio.Event()
            await self._resumed.wait()
            self._check_open()
        if self.fail_with is not None:
            raise self.fail_with
        if self.latency:
            await anyio.sleep(self.latency)
        self._check_open()
        self._deliver(batch)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        self.resume()  # a stalled write must not outlive the socket
        await anyio.lowlevel.checkpoint()

    def _check_open(self) -> None:
        if self.close_code is not None:
            raise TransportError(f"{self!r} is closed ({self.close_code})")

    def _deliver(self, batch: Sequence[Outbound]) -> None:
        self.writes += 1
        for item in batch:
            if isinstance(item, Ping):
                self.pings += 1
                if self.auto_pong and self.connection is not None:
                    self.connection.touch(pong=True)
            else:
                self.received.append(item)
