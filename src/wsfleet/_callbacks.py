"""State-change callbacks: registered by the application, run by the manager's dispatcher.

A callback may be sync or async and may take ``(socket, old, new)`` or the ``StateChange``
record alone; which one is decided once, when it is added. The dispatcher runs callbacks one
change at a time, in the order the changes happened, so each connection's callbacks see its
changes in order. A callback that raises is logged and counted; one that hangs is abandoned
after the manager's ``callback_timeout``. Neither stops the others.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import anyio

from .fsm.machine import StateChange

__all__ = ["CallbackHandle", "Callbacks", "StateCallback"]

logger = logging.getLogger("wsfleet")

StateCallback: TypeAlias = Callable[..., Awaitable[None] | None]


def _wants_record(callback: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(callback).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: assume the classic form
        return False
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    return len(positional) == 1 and not varargs


class CallbackHandle:
    """What ``on_state_change`` returns: call ``remove()`` to unsubscribe.

    It also calls through to the callback, so ``@manager.on_state_change`` leaves the
    decorated name usable as a function.
    """

    __slots__ = ("_callbacks", "callback", "wants_record")

    def __init__(self, callbacks: Callbacks, callback: StateCallback) -> None:
        self._callbacks = callbacks
        self.callback = callback
        self.wants_record = _wants_record(callback)

    def remove(self) -> bool:
        """Stop calling this callback; ``False`` if it was already removed."""
        return self._callbacks.discard(self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.callback(*args, **kwargs)


class Callbacks:
    __slots__ = ("_handles", "errors", "timeout", "timeouts")

    def __init__(self, timeout: float) -> None:
        self._handles: dict[CallbackHandle, None] = {}
        self.timeout = timeout
        self.errors = 0
        self.timeouts = 0

    def add(self, callback: StateCallback) -> CallbackHandle:
        if not callable(callback):
            from ._errors import WrongType

            raise WrongType(f"callback must be callable, got {type(callback).__name__}")
        handle = CallbackHandle(self, callback)
        self._handles[handle] = None
        return handle

    def discard(self, handle: CallbackHandle) -> bool:
        return self._handles.pop(handle, 0) is None

    def __bool__(self) -> bool:
        return bool(self._handles)

    def __len__(self) -> int:
        return len(self._handles)

    async def run(self, change: StateChange, socket: object) -> None:
        """Call every callback for ``change``; none of them can stop the others."""
        for handle in list(self._handles):
            try:
                if handle.wants_record:
                    result = handle.callback(change)
                else:
                    result = handle.callback(socket, change.old, change.new)
                if inspect.isawaitable(result):
                    with anyio.move_on_after(self.timeout) as scope:
                        await result
                    if scope.cancelled_caught:
                        self.timeouts += 1
                        logger.error(
                            "state-change callback %r took longer than %.3g s; abandoned",
                            handle.callback,
                            self.timeout,
                        )
            except Exception:
                self.errors += 1
                logger.exception("state-change callback %r raised", handle.callback)
