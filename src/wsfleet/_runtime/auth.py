"""Who a socket is: the application's authentication hook, asked once per socket.

``ConnectionManager(authenticate=hook)``: ``hook(handshake) -> identifier | None``, plain or
``async``, reads the request that opened the socket (a ``Handshake``, the same shape on
every adapter) and names the identity it proves. ``None``, or ``Unauthenticated`` raised,
refuses the socket; any other exception is a bug of the hook's and goes to its caller (a
refusal registers nothing either way). The identifier it returns is checked like any
other (a ``str`` of 1-256 characters of valid Unicode).

An answer is remembered for the object it was asked about, for as long as that object
lives (weakly: the memory never keeps a socket alive), so that a hook run at the handshake
(an adapter's ``process_request``, ``accept`` helpers) is not run again by the
handler's ``manager.session(ws)``. A trio-websocket request's answer is remembered for the
connection it becomes too (``socket_of``).

Every refusal is logged, once, at INFO. ``authenticated_session`` is ``manager.session(ws)``
without an identifier: the hook's answer, or a refusal. A refused session is the same as
one refused for a bad identifier (see ``session``), with the close code 4401 and the
hook's reason.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress

import anyio

from ..closecodes import UNAUTHENTICATED
from ..errors import Unauthenticated, WrongType, WsfleetError
from ..handshake import Handshake, handshake_of, socket_of
from .registry import check_name
from .session import Session, SessionHost, close_reason, open_session

__all__ = ["Authenticate", "Authenticator", "authenticated_session", "session_for"]

logger = logging.getLogger("wsfleet")

Authenticate = Callable[[Handshake], "str | Awaitable[str | None] | None"]


class Authenticator:
    """One manager's hook and what it answered, by the object it was asked about."""

    __slots__ = ("_hook", "_known")

    def __init__(self, hook: Authenticate | None) -> None:
        if hook is not None and not callable(hook):
            raise WrongType(
                f"authenticate must be a function (handshake) -> str | None, got {hook!r}"
            )
        self._hook = hook
        #: id(object) -> (a weak reference to it, its identifier)
        self._known: dict[int, tuple[weakref.ref[object], str]] = {}

    @property
    def hooked(self) -> bool:
        """Whether the manager authenticates (it was given a hook)."""
        return self._hook is not None

    def known(self, obj: object) -> str | None:
        entry = self._known.get(id(obj))
        if entry is None or entry[0]() is not obj:
            return None
        return entry[1]

    def remember(self, obj: object, identifier: str) -> None:
        key = id(obj)
        known = self._known

        def gone(ref: weakref.ref[object]) -> None:
            entry = known.get(key)
            if entry is not None and entry[0] is ref:
                del known[key]

        with suppress(TypeError):  # not weakly referenceable (a raw ASGI scope): forgotten
            known[key] = (weakref.ref(obj, gone), identifier)

    async def identify(self, obj: object) -> str:
        """The identifier the hook names for ``obj``'s handshake; ``Unauthenticated`` if it
        refuses. Asked once per object (see the module docstring)."""
        identifier = self.known(obj)
        if identifier is not None:
            return identifier
        hook = self._hook
        if hook is None:
            raise WrongType(
                "this manager has no authenticate= hook: give one to ConnectionManager, "
                "or pass the identifier to session()"
            )
        handshake = handshake_of(obj)
        try:
            answer = hook(handshake)
            if inspect.isawaitable(answer):
                answer = await answer
            if answer is None:
                raise Unauthenticated()
        except Unauthenticated as refused:
            # One line per refusal, wherever it is answered (an HTTP 401 at the handshake,
            # a 4401 close after it); the path without its query, which may hold a token.
            peer = f" from {handshake.client[0]}" if handshake.client else ""
            logger.info(
                "refused a socket: %s (%s%s)", refused.reason, _printable(handshake.path), peer
            )
            raise
        if not isinstance(answer, str):
            raise WrongType(f"authenticate must return a str or None, got {answer!r}")
        check_name("identifier", answer)
        self.remember(obj, answer)
        future = socket_of(obj)
        if future is not obj:
            self.remember(future, answer)
        return answer


@asynccontextmanager
async def authenticated_session(
    host: SessionHost,
    auth: Authenticator,
    socket: object,
    resume: str | None,
    claimed: str | None = None,
    meta: object = None,
) -> AsyncIterator[Session]:
    """``open_session`` under the identifier the hook names; a refusal closes the socket
    with 4401 and runs the block with a refused session (nothing registered).

    ``claimed``: the identifier the application passed to ``session`` although the manager
    authenticates: it must be the one the hook names, or the socket is refused the same way
    (an identifier taken from the URL must not override, or skip, the authentication)."""
    host.check()
    try:
        identifier = await auth.identify(socket)
        if claimed is not None and claimed != identifier:
            logger.info("refused a socket: it claims another identifier than its own")
            raise Unauthenticated("not the authenticated identifier")
    except Unauthenticated as exc:
        reason = close_reason(exc.reason or "unauthenticated")  # logged by ``identify``
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(host.close_timeout),
            suppress(Exception),  # the peer may be gone, the socket not a transport's yet
        ):
            await host.transport_for(socket).close(UNAUTHENTICATED, reason)
        session = Session(None, refused=reason)
        session.close_code = UNAUTHENTICATED
        try:
            yield session
        except WsfleetError as error:  # the block used the identity it was refused
            logger.debug("a refused session's block ended with %r", error)
        return
    async with open_session(host, socket, identifier, resume, meta) as session:
        yield session


def session_for(
    host: SessionHost,
    auth: Authenticator,
    socket: object,
    identifier: str | None,
    resume: str | None,
    meta: object = None,
) -> AbstractAsyncContextManager[Session]:
    """``manager.session``: under the identifier the hook names (which ``identifier``, if
    given, must be), or without a hook under ``identifier``."""
    if identifier is None or auth.hooked:
        return authenticated_session(host, auth, socket, resume, identifier, meta)
    return open_session(host, socket, identifier, resume, meta)


def _printable(text: str, limit: int = 200) -> str:
    """``text`` as a log line may carry it: the client chose it, so a newline or an escape
    sequence in it must not forge a line or repaint a terminal (escaped, as ``repr`` does),
    and a long one is cut."""
    if text.isprintable() and len(text) <= limit:
        return text
    shown = repr(text[:limit])[1:-1]
    return shown + ("..." if len(text) > limit else "")
