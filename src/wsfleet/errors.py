"""Every error wsfleet raises, under one root.

Catch ``WsfleetError`` to catch everything the library raises on purpose. Each error also
derives from the builtin that describes the mistake, so code written against plain Python
conventions (``except ValueError``) keeps working::

    WsfleetError (Exception)
    ├── InvalidTransition (ValueError)     .state, .target, .reason
    ├── InvalidPolicy (ValueError)         .field
    ├── RetriesExhausted                   .attempts
    ├── InvalidArgument (ValueError)       bad identifier, group name, size ...
    │   └── InvalidMeta                     presence metadata too large or not JSON
    ├── WrongType (TypeError)              a message that is neither str nor bytes ...
    ├── MessageTooLarge (ValueError)       .size, .limit, .detail
    ├── UnencodableMessage (ValueError)    text that is not valid Unicode (lone surrogates)
    ├── AlreadyRegistered (ValueError)     the same socket registered twice
    ├── JoinRefused (PermissionError)      .identifier, .group: a join rule said no
    ├── Unauthenticated (PermissionError)  .reason: the authentication hook refused a socket
    ├── UnknownSocket (KeyError)           a socket the manager does not hold
    ├── UnknownIdentifier (KeyError)       an identifier with no connection
    ├── ManagerClosed (RuntimeError)       the manager is not running
    ├── WrongThread (RuntimeError)         called from a thread other than the manager's loop
    ├── ResumeExpired                      a held session was not resumed within its window
    ├── RecoveryImpossible                 .reason: a group's history cannot fill a gap
    ├── MalformedEnvelope (ValueError)     .header: backplane bytes that are not an envelope
    └── TransportError (ConnectionError)   a socket failed or was closed under us
        ├── TransportClosed                 .code, .reason: the peer closed the socket
        └── FinalRefusal                    a server refused in a way retrying will not fix

Third-party exceptions (trio-websocket, websockets, starlette, coredis) never leave an
adapter untranslated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .closecodes import is_clean

if TYPE_CHECKING:
    from .fsm.states import ConnectionState

__all__ = [
    "AlreadyRegistered",
    "FinalRefusal",
    "InvalidArgument",
    "InvalidMeta",
    "InvalidPolicy",
    "InvalidTransition",
    "JoinRefused",
    "MalformedEnvelope",
    "ManagerClosed",
    "MessageTooLarge",
    "RecoveryImpossible",
    "ResumeExpired",
    "RetriesExhausted",
    "TransportClosed",
    "TransportError",
    "Unauthenticated",
    "UnencodableMessage",
    "UnknownIdentifier",
    "UnknownSocket",
    "WrongThread",
    "WrongType",
    "WsfleetError",
]


class WsfleetError(Exception):
    """Root of every error wsfleet raises on purpose."""


class InvalidTransition(WsfleetError, ValueError):
    """A state change the transition table refuses; nothing was changed.

    ``reason`` says whether the pair is absent from the table or a guard said no.
    """

    def __init__(
        self,
        state: ConnectionState | None,
        target: ConnectionState,
        reason: str = "not in the transition table",
    ) -> None:
        #: The current state; ``None`` for a connection not created yet.
        self.state = state
        self.target = target
        self.reason = reason
        source = "new" if state is None else state.name
        super().__init__(f"cannot go from {source} to {target.name}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (type(self), (self.state, self.target, self.reason))


class InvalidPolicy(WsfleetError, ValueError):
    """A policy was built with a value outside its range; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (type(self), (self.field, self.message))


class RetriesExhausted(WsfleetError):
    """A retry policy was asked for a delay past its last attempt."""

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts
        super().__init__(f"retry policy exhausted after {attempts} attempt(s)")

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (type(self), (self.attempts,))


class InvalidArgument(WsfleetError, ValueError):
    """A value of the right type but outside what wsfleet accepts."""


class InvalidMeta(InvalidArgument):
    """Presence metadata (``register(..., meta=...)``) that is not a small JSON object: not
    JSON-encodable, keys that are not ``str``, or over ``MAX_META_BYTES`` once encoded.
    Nothing was registered or changed."""


class WrongType(WsfleetError, TypeError):
    """A value of a type wsfleet does not accept."""


class MessageTooLarge(WsfleetError, ValueError):
    """A message over the configured size limit; nothing was queued or sent."""

    def __init__(self, size: int, limit: int, detail: str = "") -> None:
        self.size = size
        self.limit = limit
        #: Whose limit it is, and how to raise it, when not the manager's own.
        self.detail = detail
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes{detail}")

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (type(self), (self.size, self.limit, self.detail))


class UnencodableMessage(WsfleetError, ValueError):
    """Text that cannot be put on the wire as UTF-8; nothing was queued or sent.

    A Python ``str`` may hold lone surrogates (``json.loads('"\\ud800"')`` makes one from
    valid JSON), which no UTF-8 encoder accepts. Refusing such text where it is offered
    keeps the failure with the caller: accepted, it would fail later, once per recipient.
    """

    def __init__(self, position: int, reason: str) -> None:
        #: Index in the text of the first character that cannot be encoded.
        self.position = position
        self.reason = reason
        super().__init__(
            f"text cannot be encoded as UTF-8 (character {position}: {reason}); nothing was sent"
        )

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (type(self), (self.position, self.reason))


class AlreadyRegistered(WsfleetError, ValueError):
    """The socket is already registered with this manager."""


class JoinRefused(WsfleetError, PermissionError):
    """A join rule (``manager.join_rule``, ``can_join=``) refused ``identifier`` the group
    ``group``; nothing was changed."""

    def __init__(self, identifier: str, group: str) -> None:
        super().__init__(f"{identifier!r} may not join {group!r}: a join rule refused it")
        self.identifier = identifier
        self.group = group

    def __reduce__(self) -> tuple[type[JoinRefused], tuple[str, str]]:
        return (type(self), (self.identifier, self.group))


class Unauthenticated(WsfleetError, PermissionError):
    """The authentication hook (``ConnectionManager(authenticate=...)``) refused a socket:
    it returned ``None`` or raised this. Nothing was registered.

    A hook raises it to give the client a reason, which goes in the refusal: the body of an
    HTTP 401 at the handshake, or the reason of the 4401 close. Keep it short and tell
    nothing the client should not know (a close reason holds at most 123 bytes).
    """

    def __init__(self, reason: str = "unauthenticated") -> None:
        super().__init__(reason)
        self.reason = reason

    def __reduce__(self) -> tuple[type[Unauthenticated], tuple[str]]:
        return (type(self), (self.reason,))


class _KeyErrorMessage(WsfleetError, KeyError):
    # KeyError.__str__ shows repr(args[0]); a sentence reads better.
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownSocket(_KeyErrorMessage):
    """The socket is not registered with this manager."""


class UnknownIdentifier(_KeyErrorMessage):
    """No connection is registered under this identifier."""


class ManagerClosed(WsfleetError, RuntimeError):
    """The manager is not running (not entered yet, or already closed)."""


class WrongThread(WsfleetError, RuntimeError):
    """A manager was called from a thread other than the one its event loop runs in.

    Its state is guarded by running on one loop, not by locks: a call from another thread
    would race the loop's own. Such calls go through the loop, with ``anyio.from_thread``.
    """


class TransportError(WsfleetError, ConnectionError):
    """A transport could not do what was asked: the peer is gone or the socket is closed.

    Adapters raise it (translating their library's own exceptions); the manager catches it
    and moves the connection to ERROR rather than letting it reach a fan-out caller.
    """


class TransportClosed(TransportError):
    """The WebSocket was closed; ``code`` is 1006 when it went away without a closing frame.

    1000 (normal), 1001 (going away) and 1005 (a closing frame without a code) are clean
    closes; every other code is abnormal.
    """

    def __init__(self, code: int = 1006, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"closed with code {code}" + (f": {reason}" if reason else ""))

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (type(self), (self.code, self.reason))

    @property
    def clean(self) -> bool:
        return is_clean(self.code)


class FinalRefusal(TransportError):
    """A server refused in a way that says retrying would not help: an HTTP 4xx answer to
    the handshake. An outbound connection that meets one ends DISCONNECTED at once."""


class ResumeExpired(WsfleetError):
    """A held server-side session was not resumed within its window."""


class RecoveryImpossible(WsfleetError):
    """``manager.recover`` cannot send a socket exactly what it missed of a group: the
    history was lost (another epoch), the position fell out of it, or the socket was
    already sent newer messages. Nothing was replayed; the application reloads its state
    instead (and keeps the socket: the group's live messages go on)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (type(self), (self.reason,))


class MalformedEnvelope(WsfleetError, ValueError):
    """Bytes on the backplane channel that are not a wsfleet envelope of this namespace.

    The backplane's subscriber meets it, logs it, counts it (``"malformed"`` in
    ``stats().backplane``) and goes on: a foreign or corrupt message never stops a node.
    ``header`` is the envelope's header when that much was sound (the body was not), else
    ``None``; with a header, the receiver counts the send it replaced as dropped.
    """

    def __init__(self, message: str, header: object = None) -> None:
        super().__init__(message)
        #: A ``wsfleet.backplane.wire.Header`` (typed loosely here: the errors know no layer
        #: above them).
        self.header = header


# Shown as ``wsfleet.InvalidTransition`` in tracebacks and reprs, where users import them from.
for _error in (
    WsfleetError,
    InvalidTransition,
    InvalidPolicy,
    RetriesExhausted,
    InvalidArgument,
    InvalidMeta,
    WrongType,
    MessageTooLarge,
    UnencodableMessage,
    AlreadyRegistered,
    JoinRefused,
    Unauthenticated,
    UnknownSocket,
    UnknownIdentifier,
    ManagerClosed,
    WrongThread,
    TransportError,
    TransportClosed,
    FinalRefusal,
    ResumeExpired,
    RecoveryImpossible,
    MalformedEnvelope,
):
    _error.__module__ = "wsfleet"
del _error
