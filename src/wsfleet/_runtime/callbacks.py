"""State-change callbacks: registered by the application, each run in a lane of its own.

A callback may be sync or async and may take ``(socket, old, new)`` or the ``StateChange``
record alone; which one is decided once, when it is added. Every callback has its own queue
of changes and its own task (its lane): it sees every change in the order the changes
happened, one at a time, and only ever waits for itself. That is the point of lanes: with one
queue for all, a callback that hangs on every change would hold each change's other callbacks
back by ``callback_timeout``, so a burst of n changes would reach a well-behaved callback
n x ``callback_timeout`` late. A callback that raises is logged and counted; one that hangs
is abandoned after the manager's ``callback_timeout`` and counted. A lane more than
``BACKLOG`` changes behind drops its oldest change, counted and logged, so a callback that
cannot keep up costs bounded memory.

Presence events (``on_presence``) run the same way, in lanes of their own: a second
``Callbacks`` whose callbacks always take the one event record (``single``).
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import anyio
import anyio.abc

from ..errors import WrongType
from ..fsm.machine import StateChange

__all__ = ["CallbackHandle", "Callbacks", "StateCallback"]

logger = logging.getLogger("wsfleet")

#: How many changes a callback may be behind before its oldest is dropped (and counted).
BACKLOG = 10_000

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


class _Lane:
    """One callback's queue of changes and the task that works through it."""

    __slots__ = ("busy", "closed", "handle", "pending", "wake")

    def __init__(self, handle: CallbackHandle) -> None:
        self.handle = handle
        self.pending: deque[tuple[Any, object]] = deque()
        self.wake: anyio.Event | None = None  # made by the worker, inside the event loop
        self.busy = False
        self.closed = False

    def poke(self) -> None:
        wake = self.wake
        if wake is not None and not wake.is_set():
            wake.set()


class Callbacks:
    """The callbacks, each with a lane of its own (see the module's docstring)."""

    __slots__ = (
        "_idle",
        "_lanes",
        "_tg",
        "backlog",
        "dropped",
        "errors",
        "label",
        "single",
        "timeout",
        "timeouts",
    )

    def __init__(
        self,
        timeout: float,
        backlog: int = BACKLOG,
        *,
        label: str = "state-change",
        single: bool = False,
    ) -> None:
        #: What the log lines call these callbacks.
        self.label = label
        #: Every callback takes the record alone (presence events have no other form).
        self.single = single
        self._lanes: dict[CallbackHandle, _Lane] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._idle: anyio.Event | None = None
        self.timeout = timeout
        self.backlog = backlog
        self.errors = 0
        self.timeouts = 0
        self.dropped = 0

    def add(self, callback: StateCallback) -> CallbackHandle:
        if not callable(callback):
            raise WrongType(f"callback must be callable, got {type(callback).__name__}")
        handle = CallbackHandle(self, callback)
        handle.wants_record = handle.wants_record or self.single
        lane = self._lanes[handle] = _Lane(handle)
        if self._tg is not None:
            self._tg.start_soon(self._work, lane, name=f"wsfleet callback {callback!r}")
        return handle

    def discard(self, handle: CallbackHandle) -> bool:
        lane = self._lanes.pop(handle, None)
        if lane is None:
            return False
        lane.closed = True
        lane.pending.clear()  # unsubscribed: what it had not seen yet is no longer its
        lane.poke()
        if self._idle is not None:
            self._idle.set()
        return True

    def __bool__(self) -> bool:
        return bool(self._lanes)

    def __len__(self) -> int:
        return len(self._lanes)

    def publish(self, change: StateChange | Any, socket: object) -> None:
        """Queue ``change`` for every callback; O(number of callbacks), never waits."""
        for lane in self._lanes.values():
            pending = lane.pending
            if len(pending) >= self.backlog:
                pending.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % self.backlog == 0:
                    logger.error(
                        "%s callback %r is %d changes behind; its oldest change was "
                        "dropped (%d dropped so far, stats().drops['callback backlog'])",
                        self.label,
                        lane.handle.callback,
                        len(pending),
                        self.dropped,
                    )
            pending.append((change, socket))
            lane.poke()

    def busy(self) -> bool:
        """Whether some callback still has a change to see, or is seeing one."""
        return any(lane.busy or lane.pending for lane in self._lanes.values())

    async def wait_idle(self) -> None:
        """Return once no callback has a change left to see (bound it with a timeout)."""
        while self.busy():
            self._idle = idle = anyio.Event()
            await idle.wait()

    async def run(self) -> None:
        """Run every lane until cancelled (the manager's dispatcher task)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                for lane in self._lanes.values():
                    name = f"wsfleet callback {lane.handle.callback!r}"
                    tg.start_soon(self._work, lane, name=name)
                await anyio.sleep_forever()
            finally:
                self._tg = None

    async def _work(self, lane: _Lane) -> None:
        pending = lane.pending
        while not lane.closed:
            lane.wake = anyio.Event()
            if not pending:
                await lane.wake.wait()
                continue
            lane.busy = True
            try:
                while pending and not lane.closed:
                    change, socket = pending.popleft()
                    await self._call(lane.handle, change, socket)
            finally:
                lane.busy = False
                if self._idle is not None:
                    self._idle.set()

    async def _call(self, handle: CallbackHandle, change: Any, socket: object) -> None:
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
                        "%s callback %r took longer than %.3g s; abandoned",
                        self.label,
                        handle.callback,
                        self.timeout,
                    )
        except Exception:
            self.errors += 1
            logger.exception("%s callback %r raised", self.label, handle.callback)
