"""What the manager needs from a socket, and how native sockets find their adapter.

The manager never imports a WebSocket library. It talks to a ``Transport``: send a batch of
messages (coalesced as the library allows), ping, close. Adapters subclass it for their
library and register a factory, so ``manager.register(native_socket, ...)`` works with the
library's own connection object.

Writes are batched on purpose: when several messages wait for a connection, the manager hands
them over in one call, so an adapter whose library allows it can put every frame on the wire
with one system call. ``send_nowait`` lets a transport that can accept a batch without
waiting (a socket buffer with room) take it synchronously, so the common case costs no task;
the manager falls back to a writer task awaiting ``send`` only when it returns ``False``.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, Final, Protocol, TypeAlias

from .errors import TransportError, UnencodableMessage, WrongType

__all__ = [
    "PING",
    "Dialer",
    "Message",
    "Outbound",
    "Ping",
    "PongSignal",
    "Reporter",
    "Transport",
    "adapter_for",
    "dialer_for",
    "message_size",
    "register_adapter",
    "register_dialer",
]

Message: TypeAlias = str | bytes
"""A WebSocket message: ``str`` goes as a text frame, ``bytes`` as a binary frame."""


def message_size(message: object) -> int:
    """Bytes on the wire (UTF-8 for text); refuses what no transport could send.

    ``WrongType`` for anything but str and bytes, ``UnencodableMessage`` for text with lone
    surrogates: checked where a message is offered, once per call, so that one that cannot be
    written never reaches a queue, where it would fail once for every recipient and look
    like their fault.
    """
    if isinstance(message, str):
        if message.isascii():
            return len(message)
        try:
            return len(message.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise UnencodableMessage(exc.start, exc.reason) from None
    if isinstance(message, bytes):
        return len(message)
    raise WrongType(f"message must be str or bytes, got {type(message).__name__}")


class Ping:
    """Marker in an outbound batch: send a ping frame here.

    Pings travel in the same queue as messages (at its head), so a transport writes them with
    the rest of a batch and the manager never blocks on a slow peer to ping it.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "PING"


PING: Final = Ping()

Outbound: TypeAlias = str | bytes | Ping


class Reporter(Protocol):
    """What a transport reports its socket's events to: its registered connection."""

    def touch(self, *, pong: bool = False) -> None:
        """A message arrived (or, with ``pong=True``, a pong)."""

    def closed(self, code: int | None = 1000, reason: str = "") -> None:
        """The socket closed, with this code and reason."""

    def failed(self, error: BaseException | str) -> None:
        """The socket failed (an I/O error): the connection goes to ERROR."""


class PongSignal:
    """Reports a pong to the transport's connection when ``set()`` is called.

    Libraries that track outstanding pings keep an event per ping and ``set()`` it when the
    pong arrives; an adapter can hold one of these in its place, so that the pong reaches
    the manager without a task waiting on an event.
    """

    __slots__ = ("_transport",)

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def set(self) -> None:
        conn = self._transport.connection
        if conn is not None:
            conn.touch(pong=True)


class Transport(ABC):
    """One WebSocket as the manager sees it. Adapters subclass this.

    The manager calls ``attach`` once at registration; from then on the transport reports
    inbound events through ``self.connection`` (``touch()`` for a message, ``touch(pong=True)``
    for a pong, ``closed(...)``, ``failed(...)``). Methods must raise ``TransportError`` (an
    ``OSError`` counts the same) when the socket is gone: the connection then goes to ERROR.
    Any other exception from a write is taken as that batch's failure, not the peer's: the
    batch is dropped, counted ("send error") and logged, and the connection stays as it was.
    """

    connection: Reporter | None = None
    #: Bytes a ``send_nowait`` took but the socket did not accept yet (see ``send_nowait``).
    unsent: int = 0
    #: Whether the transport can send ``PING`` and report pongs. One that cannot says why in
    #: ``no_ping_reason``; a manager whose heartbeat pings refuses to register it.
    can_ping: ClassVar[bool] = True
    no_ping_reason: ClassVar[str] = ""

    def attach(self, connection: Reporter) -> None:
        """Called by the manager when the transport is registered."""
        self.connection = connection

    def send_nowait(self, batch: Sequence[Outbound]) -> bool:
        """Write the whole batch now without waiting, or nothing and return ``False``.

        The default says "cannot"; the manager then awaits ``send`` in a writer task. A
        transport that writes to a non-blocking socket itself may also take the batch, write
        what the socket accepts and keep the rest: it returns ``True`` with ``unsent`` set to
        the bytes it kept, and the manager's writer awaits ``send(())`` until ``unsent`` is 0
        (``send`` writes what was kept before anything new; ``send_nowait`` declines while
        something is kept).
        """
        return False

    @abstractmethod
    async def send(self, batch: Sequence[Outbound]) -> None:
        """Write every item of the batch, in order; ``PING`` items are ping frames."""

    def limit_inbound(self, max_size: int) -> bool:
        """Have the library refuse inbound messages over ``max_size`` bytes itself.

        Called at registration when the manager has a ``max_message_size``. A library that
        can stops reading such a message early and closes with 1009; return ``True`` then.
        Either way the session checks each message's size on receipt too, and closes with
        1009 the same way: a message the library read before it was told (or one it
        measures in characters rather than bytes) is caught there.
        """
        return False

    async def receive(self) -> Message:
        """The next inbound message; raise ``TransportClosed(code, reason)`` once closed.

        Used by ``manager.session``; a transport that only sends may leave it as is.
        """
        raise TransportError(f"{type(self).__name__} cannot receive")

    @abstractmethod
    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the WebSocket with this code and reason; closing twice is harmless.

        A ``receive`` waiting when the transport is closed must end (with
        ``TransportClosed``): the manager closes sockets it evicts, and the application's
        handler, blocked in ``async for message in session``, must then finish.
        """


_ADAPTERS: dict[type, Callable[[Any], Transport]] = {}

#: The adapters wsfleet ships, by the top-level package of the socket classes they take:
#: (adapter module, the extra that installs its library, the library's name for people).
KNOWN_ADAPTERS: Final[Mapping[str, tuple[str, str, str]]] = {
    "websockets": ("wsfleet.adapters.websockets", "websockets", "websockets"),
    "trio_websocket": ("wsfleet.adapters.trio_websocket", "trio", "trio-websocket"),
    "starlette": ("wsfleet.adapters.asgi", "asgi", "Starlette/FastAPI"),
    "fastapi": ("wsfleet.adapters.asgi", "asgi", "Starlette/FastAPI"),
}


def register_adapter(native: type, factory: Callable[[Any], Transport]) -> None:
    """Let ``manager.register`` accept instances of ``native`` (and its subclasses)."""
    if not isinstance(native, type):
        raise TypeError(f"native: expected a class, got {native!r}")
    _ADAPTERS[native] = factory


def _registered(socket: object) -> Callable[[Any], Transport] | None:
    for cls in type(socket).__mro__:
        factory = _ADAPTERS.get(cls)
        if factory is not None:
            return factory
    return None


def adapter_for(socket: object) -> Callable[[Any], Transport] | None:
    """The factory registered for ``socket``'s class or its nearest registered base.

    A socket of a library wsfleet ships an adapter for needs no import first: the adapter
    is imported on first use, found from the package of the socket's class. ``None`` for
    any other class; ``ImportError`` (naming the extra) when the adapter's library is
    missing.
    """
    factory = _registered(socket)
    if factory is not None:
        return factory
    for cls in type(socket).__mro__:
        known = KNOWN_ADAPTERS.get(cls.__module__.partition(".")[0])
        if known is not None:
            module, extra, _ = known
            try:
                importlib.import_module(module)  # registers its socket classes
            except ImportError as exc:
                raise ImportError(
                    f"{module} cannot be imported ({exc}): pip install 'wsfleet[{extra}]'"
                ) from exc
            return _registered(socket)
    return None


class Dialer(Protocol):
    """What a client backend provides: open a WebSocket, as a transport, for a block."""

    def __call__(self, url: str, **options: Any) -> AbstractAsyncContextManager[Transport]: ...


#: The client backends wsfleet ships, by the name ``manager.connect(backend=...)`` takes.
KNOWN_DIALERS: Final[Mapping[str, str]] = {
    "websockets": "wsfleet.adapters.websockets",
    "trio-websocket": "wsfleet.adapters.trio_websocket",
}

_DIALERS: dict[str, tuple[Dialer, frozenset[str]]] = {}


def register_dialer(
    name: str, dialer: Dialer, *, loops: Iterable[str] = ("asyncio", "trio")
) -> None:
    """Let ``manager.connect(..., backend=name)`` dial with ``dialer`` on these event loops."""
    _DIALERS[name] = (dialer, frozenset(loops))


def dialer_for(name: str) -> tuple[Dialer, frozenset[str]] | None:
    """The dialer registered as ``name`` and the loops it runs on, importing a shipped
    backend on first use; ``None`` for a name nobody registered."""
    if name not in _DIALERS and name in KNOWN_DIALERS:
        importlib.import_module(KNOWN_DIALERS[name])
    return _DIALERS.get(name)


def no_adapter(socket: object) -> str:
    """What to tell someone who registered a socket no adapter takes."""
    cls = type(socket)
    choices = ", ".join(
        f"{name} (pip install 'wsfleet[{extra}]')"
        for module, extra, name in dict.fromkeys(KNOWN_ADAPTERS.values())
    )
    return (
        f"no transport adapter for {cls.__module__}.{cls.__qualname__}: wsfleet takes the "
        f"sockets of {choices}, or any wsfleet.Transport (subclass it for another library "
        "and call wsfleet.register_adapter)"
    )
