"""This process as a benchmark sees it: memory, CPU time, files, CPUs, a port, its driver."""

from __future__ import annotations

import os
import resource
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable

import anyio
import anyio.to_thread


def rss() -> int | None:
    """This process's resident memory in bytes (Linux), or None."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return None


def proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds of another process (``/proc/<pid>/stat``, Linux), or None:
    how a driver reads what its helpers (and a ``redis-server``) spent, from outside."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            # the command name may hold spaces: the fields after its closing parenthesis
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def proc_rss(pid: int) -> int | None:
    """Resident memory of another process in bytes (``/proc/<pid>/statm``), or None."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds() -> float:
    """User + system CPU time of this process (``time.process_time()``)."""
    return time.process_time()


def raise_nofile() -> None:
    """Lift the soft open-files limit to the hard one: a server holds a socket per client."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    """A loopback port nothing listens on now (bind to port 0, read it, let it go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def cpus() -> tuple[int | None, int | None]:
    """One CPU for a server, another for its clients, when there are two to give."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    mine = sorted(os.sched_getaffinity(0))
    return (mine[0], mine[1]) if len(mine) >= 2 else (None, None)


def pin(cpu: int | None) -> None:
    """Keep this process on one CPU (where the system can)."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def say(line: str) -> None:
    """One line to the driver (a helper process's answer), flushed at once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def commands() -> AsyncIterator[list[str]]:
    """A helper process's commands: the driver's lines split into words, blank ones skipped,
    until it says ``quit`` or closes stdin. Reads in a worker thread (anyio, so on asyncio
    and trio alike) and leaves the event loop free meanwhile."""
    while True:
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        if not line:
            return
        words = line.split()
        if words == ["quit"]:
            return
        if words:
            yield words


async def count_reaches(count: Callable[[], int], want: int, limit: float, step: float) -> int:
    """Wait until ``count()`` (what other tasks change, e.g. connections held) reaches
    ``want`` or ``limit`` seconds pass, polling every ``step`` s; the count then."""
    with anyio.move_on_after(limit):
        while count() < want:  # noqa: ASYNC110 (the handlers of other tasks change it)
            await anyio.sleep(step)
    return count()
