"""Finding the ASGI server behind a Starlette WebSocket, for the adapter's direct path.

ASGI hands the application one ``send`` callable per connection and one event per message,
which costs every message of a fan-out a trip through Starlette, the server's ``send`` and
its frame encoder. For the servers it knows, in the releases it was tested with, the adapter
instead writes the frames of a whole batch to the server's own transport, with one write,
and only when the server's own ``send`` would write (see the server modules). Everything
else, the close handshake, keepalive pings and reading, stays the server's.

What counts as known is strict: Starlette's ``send`` must be its exception-handling wrapper
(recognised by its code object) around the exact bound ``send`` of a known server class
(not a subclass, not a middleware's function), the installed releases must be the ones in
``TESTED``, and the server's attributes must have the types its release gives them. Anything
else takes the public path (one ASGI event per message), which every server supports; the
reason is logged once at INFO.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Generator, Mapping, Sequence
from contextlib import suppress
from importlib import metadata
from typing import Any, Final

from ..transport import Outbound

__all__ = [
    "TESTED",
    "QueueGet",
    "Server",
    "Unknown",
    "attrs_typed",
    "fall_back",
    "releases_tested",
    "server_send",
]

logger = logging.getLogger("wsfleet")

#: The releases the direct path was tested with, by server implementation. Another release
#: of any of them takes the public path.
TESTED: Final[Mapping[str, Mapping[str, str]]] = {
    "uvicorn-websockets-sansio": {
        "uvicorn": "0.55.0",
        "websockets": "17.4",
        "starlette": "1.10.0",
    },
    "uvicorn-wsproto": {"uvicorn": "0.55.0", "wsproto": "1.3.2", "starlette": "1.10.0"},
    "hypercorn-asyncio": {"hypercorn": "0.18.0", "wsproto": "1.3.2", "starlette": "1.10.0"},
    "hypercorn-trio": {"hypercorn": "0.18.0", "wsproto": "1.3.2", "starlette": "1.10.0"},
}

_release_checked: dict[str, bool] = {}
_logged: set[str] = set()


class Unknown(Exception):
    """Why the direct path is not taken for a socket (the message says it)."""


def fall_back(reason: str) -> None:
    """Log once, at INFO, why sockets of some kind take the public path."""
    if reason not in _logged:
        _logged.add(reason)
        logger.info("ASGI: one ASGI event per message for this server (%s)", reason)


def releases_tested(name: str) -> bool:
    """Whether the installed releases are those ``TESTED`` for ``name`` (checked once)."""
    ok = _release_checked.get(name)
    if ok is None:
        ok = True
        for dist, release in TESTED[name].items():
            try:
                installed = metadata.version(dist)
            except metadata.PackageNotFoundError:
                installed = None
            if installed != release:
                ok = False
                fall_back(f"{name}: {dist} {installed}, the direct path was tested with {release}")
        _release_checked[name] = ok
    return ok


def _sender_code() -> Any:
    """The code object of Starlette's ``sender``, the wrapper its exception handling puts
    around ``send`` (``wrap_app_handling_exceptions``), or ``None`` if it has none."""
    try:
        from starlette._exception_handler import wrap_app_handling_exceptions
    except ImportError:  # pragma: no cover - another Starlette
        return None
    for outer in wrap_app_handling_exceptions.__code__.co_consts:
        if getattr(outer, "co_name", None) == "wrapped_app":
            for inner in outer.co_consts:
                if getattr(inner, "co_name", None) == "sender":
                    return inner
    return None  # pragma: no cover - another Starlette


_SENDER: Final = _sender_code()


def server_send(send: object) -> object:
    """The server's ``send`` under Starlette's exception-handling wrappers around it."""
    for _ in range(4):  # Starlette nests at most one per layer (app, router, endpoint)
        code = getattr(send, "__code__", None)
        if code is None or code is not _SENDER:
            return send
        closure: tuple[Any, ...] = send.__closure__  # type: ignore[attr-defined]
        send = closure[code.co_freevars.index("send")].cell_contents
    return send


class Server(ABC):
    """How the adapter writes to, waits for and wakes one known server's connection.

    One instance per server implementation, shared by every socket: a transport holds the
    server's connection object (``conn``) and this strategy, not an object of its own.
    """

    __slots__ = ()

    #: The key of ``TESTED``.
    name: str = ""

    def write_nowait(self, conn: Any, batch: Sequence[Outbound]) -> bool:
        """Write the batch now with one write, if the server's own send would write now."""
        return False

    async def write(self, conn: Any, batch: Sequence[Outbound]) -> bool:
        """Wait as the server's send waits, then write the batch; ``False`` when the server
        would not write it any more (closed): the public path then says how."""
        return False

    @abstractmethod
    async def send_event(self, conn: Any, event: dict[str, Any]) -> None:
        """One ASGI event through the server's send, past Starlette (no direct write)."""

    @abstractmethod
    def receive(self, conn: Any, receive: Any) -> Any:
        """An awaitable of the next ASGI event, from the server's own queue (``receive`` is
        the server's receive callable, for a server whose queue has no other way in)."""

    def cancelled(self, wait: Any) -> None:  # noqa: B027 (a hook: most servers need none)
        """A wait from ``receive`` ended with an exception: undo what it registered."""

    def received(self, conn: Any) -> None:  # noqa: B027 (a hook: most servers need none)
        """An event was taken from the server's queue (what the server's receive does next)."""

    def wake(self, conn: Any, code: int, reason: str) -> None:  # noqa: B027 (a hook)
        """Make a waiting ``receive`` end: a ``websocket.disconnect`` in the server's queue,
        unless something is queued already (the server's own disconnect, say)."""


class QueueGet:
    """An awaitable of the next item of an ``asyncio.Queue``: ``queue.get()`` without the
    coroutine frame, for the one receive each idle connection keeps waiting.

    It registers a future among the queue's getters as ``Queue.get`` does, so that the
    server's ``put_nowait`` wakes it. If the wait ends with an exception (a cancellation),
    the receiver calls ``cancel``: the future leaves the getters, and if an item was handed
    to it meanwhile, the next getter is woken (the item itself never left the queue).
    """

    __slots__ = ("_getter", "_queue")

    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self._queue = queue
        self._getter: asyncio.Future[None] | None = None

    def __await__(self) -> Generator[Any, None, Any]:
        return self  # type: ignore[return-value]

    def __iter__(self) -> QueueGet:
        return self

    def __next__(self) -> Any:
        queue = self._queue
        if not queue.empty():
            self._getter = None
            raise StopIteration(queue.get_nowait())
        getter = asyncio.get_running_loop().create_future()
        queue._getters.append(getter)  # type: ignore[attr-defined]
        self._getter = getter
        getter._asyncio_future_blocking = True
        return getter

    def send(self, value: object) -> Any:
        return self.__next__()

    def cancel(self) -> None:
        getter = self._getter
        if getter is None:
            return
        self._getter = None
        queue = self._queue
        getters = queue._getters  # type: ignore[attr-defined]
        if not getter.done():
            getter.cancel()
        with suppress(ValueError):  # the queue woke it (popped it) already
            getters.remove(getter)
        if not getter.cancelled() and not queue.empty():
            # It was handed an item it will not take: the next getter takes it.
            queue._wakeup_next(getters)  # type: ignore[attr-defined]


def attrs_typed(obj: object, types: Mapping[str, type | tuple[type, ...]]) -> None:
    """Raise ``Unknown`` unless each attribute of ``obj`` has the type its release gives."""
    for name, expected in types.items():
        value = getattr(obj, name, None)
        if not isinstance(value, expected):
            raise Unknown(
                f"{type(obj).__name__}.{name} is {type(value).__name__}, not the "
                f"{getattr(expected, '__name__', expected)} of the release tested"
            )
