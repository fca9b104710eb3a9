"""What the manager needs from the running event loop, usable outside a task.

WebSocket libraries report some events from their own internals rather than from a task:
websockets on asyncio resolves a ping's future when the pong arrives, and the future's
done-callbacks run straight from the loop (``loop.call_soon``), where no task is current.
anyio's ``current_time()`` asks sniffio which library runs the *current task*, so it fails
there (``NoEventLoopError``), and a pong recorded that way was lost: every healthy client
timed out after ``ping_interval + ping_timeout``. So the manager binds the loop's clock
once, inside its ``async with``, to a function that needs no task: the asyncio loop's own
``time()``, or trio's clock, which trio's whole thread can read (and which trio's
``MockClock`` drives in tests).

The manager also remembers the thread its loop runs in: a call from another thread gets a
clear error naming ``anyio.from_thread`` instead of corrupting state no lock protects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["loop_clock", "loop_thread"]


def loop_clock() -> Callable[[], float]:
    """The running loop's clock, as a function callable from any code in the loop's thread.

    Call it from a task of the loop (the manager does, on entering its block).
    """
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: trio's clock is readable anywhere in its thread
        return _trio_clock()
    return loop.time


def _trio_clock() -> Callable[[], float]:
    """trio's own ``current_time``: what ``anyio.current_time`` ends in on trio, without
    asking sniffio which library runs first, several calls deep on every clock read (a
    register + unregister reads it three times). anyio runs on asyncio or trio, so trio
    is the running loop here, and imported already."""
    import trio

    return trio.current_time


def loop_thread() -> int:
    """The identity of the thread the running loop runs in (the caller's)."""
    return threading.get_ident()
