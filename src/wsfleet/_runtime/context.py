"""What every runtime part shares: the loop's clock, where tasks start, whose thread it is.

The parts (outbox, timers, resumption, the fleet that ties them) are built before the
manager enters its block, when there is no event loop yet; ``bind`` gives them the loop's
clock, thread and task group once there is. They never reach for the manager: this small
object is all they know of the world around them, so each can be built and tested alone.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVarTuple

import anyio.abc

from ..errors import ManagerClosed, WrongThread
from ..fsm.clock import Clock, MonotonicClock
from .loop import loop_clock, loop_thread

__all__ = ["Context"]

_Args = TypeVarTuple("_Args")


class Context:
    """The clock, the task group and the thread of the loop the manager runs in."""

    __slots__ = ("_tg", "clock", "closing", "thread")

    def __init__(self) -> None:
        #: Replaced by the loop's own clock in ``bind`` (trio's MockClock drives it in tests).
        self.clock: Clock = MonotonicClock()
        self.thread: int | None = None
        #: Set once shutting down: new work is refused, cleaning up is not.
        self.closing = False
        self._tg: anyio.abc.TaskGroup | None = None

    def bind(self, tg: anyio.abc.TaskGroup) -> None:
        """Called inside the loop, on entering the manager's block."""
        self.clock = MonotonicClock(loop_clock())
        self.thread = loop_thread()
        self._tg = tg

    def unbind(self) -> None:
        self.closing = True
        self._tg = None

    @property
    def running(self) -> bool:
        return self._tg is not None and not self.closing

    def check(self, *, cleanup: bool = False) -> None:
        """Refuse a call that changes the fleet: from another thread, or outside the block.

        ``cleanup`` calls (unregister, close, leaving a group) are still taken while the
        manager shuts down, when handlers end and clean up after themselves.
        """
        if self.thread is not None and loop_thread() != self.thread:
            raise WrongThread(
                "a ConnectionManager is called from its event loop's thread only: from "
                "another thread, go through the loop with anyio.from_thread.run_sync(...) "
                "(anyio.from_thread.run(...) for coroutines) or a blocking portal"
            )
        if self._tg is None:
            if self.closing:
                raise ManagerClosed("the manager's block has ended: it takes no more calls")
            raise ManagerClosed("the manager is not running (use 'async with ConnectionManager()')")
        if self.closing and not cleanup:
            raise ManagerClosed("the manager is shutting down: it takes no new work")

    def now(self) -> float:
        return self.clock.now()

    def spawn(
        self, func: Callable[[*_Args], Coroutine[Any, Any, None]], *args: *_Args, name: str
    ) -> None:
        """Start a task of the manager's; unlike the public calls, this works while shutting
        down (flushing on exit needs writers, and an eviction on exit still closes its socket).
        """
        tg = self._tg
        assert tg is not None, "tasks start only inside the manager's block"
        tg.start_soon(func, *args, name=name)

    @property
    def task_group(self) -> anyio.abc.TaskGroup:
        tg = self._tg
        if tg is None:
            raise ManagerClosed("the manager is not running (use 'async with ConnectionManager()')")
        return tg
