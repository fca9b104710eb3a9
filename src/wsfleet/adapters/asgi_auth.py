"""Authentication before an ASGI WebSocket is accepted (Starlette, FastAPI).

An ASGI application decides whether to accept a WebSocket: until it sends
``websocket.accept``, no WebSocket exists, and a refusal is an HTTP answer. ``accept``
asks the manager's ``authenticate`` hook first, then accepts, or refuses::

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket) -> None:
        if await accept(manager, websocket) is None:
            return  # refused: HTTP 401 (or 403), nothing registered
        async with manager.session(websocket) as session:  # the hook's identity
            async for message in session:
                ...

How the refusal reaches the client depends on the server. Where it offers ASGI's
``websocket.http.response`` extension (uvicorn), the client gets an HTTP ``status`` (401)
with the reason as its body. Elsewhere (hypercorn) the app can only close the WebSocket
before accepting it, which the server answers with HTTP 403. Either way the client's
handshake fails with an HTTP status and no WebSocket was ever opened.
"""

from __future__ import annotations

from typing import Protocol

from ..closecodes import MAX_REASON_BYTES, UNAUTHENTICATED
from ..errors import InvalidArgument, Unauthenticated

try:
    from starlette.responses import PlainTextResponse
    from starlette.websockets import WebSocket, WebSocketDisconnect
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "wsfleet.adapters.asgi_auth needs Starlette: pip install 'wsfleet[asgi]'"
    ) from exc

__all__ = ["accept"]

#: The ASGI extension that lets an application answer a WebSocket handshake over HTTP.
_DENIAL = "websocket.http.response"


class _Authenticates(Protocol):
    async def authenticate(self, socket: object, /) -> str: ...


async def accept(
    manager: _Authenticates,
    websocket: WebSocket,
    *,
    subprotocol: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    status: int = 401,
) -> str | None:
    """Ask the manager's ``authenticate`` hook, then accept the WebSocket or refuse it.

    Returns the identifier (remembered for ``manager.session(websocket)``) once accepted;
    ``None`` once refused (see the module docstring), or if the client left meanwhile.
    Another exception of the hook's is the application's bug and goes on; the WebSocket
    is then never accepted, which the server answers with a 500 or a 403.
    """
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status < 500:
        raise InvalidArgument(f"status must be an HTTP 4xx code, got {status!r}")
    try:
        identifier = await manager.authenticate(websocket)
    except Unauthenticated as exc:
        try:
            if _DENIAL in (websocket.scope.get("extensions") or {}):
                response = PlainTextResponse(exc.reason, status_code=status)
                await websocket.send_denial_response(response)
            else:
                reason = exc.reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]
                await websocket.close(UNAUTHENTICATED, reason.decode("utf-8", "ignore"))
        except (WebSocketDisconnect, OSError):
            pass  # the client is gone: refused all the same
        return None
    try:
        await websocket.accept(subprotocol=subprotocol, headers=headers)
    except (WebSocketDisconnect, OSError):
        return None
    return identifier
