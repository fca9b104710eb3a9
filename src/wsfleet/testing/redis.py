"""A throw-away ``redis-server`` for tests: own process, free loopback port, no persistence.

For an application's tests of a Redis-backed fleet, as for wsfleet's own::

    with RedisServer() as server:       # RedisServerError if redis-server is missing
        backplane = RedisBackplane(server.url)
        ...

``server.url`` is ``redis://127.0.0.1:<port>/0``. ``server.kill()`` SIGKILLs the process,
``server.start()`` brings it back on the *same* port, ``server.restart()`` does both
gracefully (``stop()`` then ``start()``); ``pause()``/``resume()`` freeze it (SIGSTOP and
SIGCONT). Every wait is bounded in time. It never touches a Redis already running on 6379:
the port is picked by binding a socket to port 0.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

__all__ = ["RedisServer", "RedisServerError", "ping", "redis_binary"]

HOST = "127.0.0.1"


def redis_binary() -> str | None:
    """Path of ``redis-server`` on ``PATH``, or ``None``."""
    return shutil.which("redis-server")


class RedisServerError(RuntimeError):
    """The server could not be started or did not become ready in time."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def ping(port: int, timeout: float = 0.5) -> bool:
    """True iff something on ``127.0.0.1:port`` answers ``PING`` with ``+PONG``."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            data = b""
            while b"\r\n" not in data and len(data) < 64:
                chunk = sock.recv(64)
                if not chunk:
                    break
                data += chunk
            return data.startswith(b"+PONG")
    except OSError:
        return False


def _server_pid(port: int, timeout: float = 0.5) -> int | None:
    """``process_id`` from ``INFO server`` of whatever answers on ``port``."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"INFO server\r\n")
            data = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
                match = re.search(rb"process_id:(\d+)\r\n", data)
                if match:
                    return int(match.group(1))
    except OSError:
        pass
    return None


class Launched(ABC):
    """Started on entering a ``with`` block, stopped and cleaned up on leaving it, however
    the block ends: the shape of every launcher here (one server, a Cluster, Sentinel)."""

    @abstractmethod
    def start(self) -> object:
        """Start (returns ``self``)."""

    @abstractmethod
    def close(self) -> None:
        """Stop every process and remove what was written."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RedisServer(Launched):
    """One ``redis-server`` subprocess on ``127.0.0.1``.

    The port is chosen at the first ``start()`` and kept for the object's lifetime, so a
    client built from ``url`` can reconnect after ``kill()`` + ``start()``.
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        startup_timeout: float = 5.0,
        stop_timeout: float = 3.0,
        port_attempts: int = 5,
    ) -> None:
        found = binary or redis_binary()
        if found is None:
            raise RedisServerError("redis-server is not installed (apt-get install redis-server)")
        self._binary = found
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._port_attempts = port_attempts
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None

    # -- properties -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RedisServerError("server was never started; no port assigned yet")
        return self._port

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def directory(self) -> str | None:
        """The temp dir the server runs in (its files, if any), until ``close()``."""
        return self._tmpdir.name if self._tmpdir is not None else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> RedisServer:
        """Start the server (on the same port as before, if it ran before); wait for PONG."""
        if self.running:
            return self
        self._reap()
        if self._tmpdir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="wsfleet-redis-")
        if self._port is not None:
            # Same port again; after SIGKILL the listening socket is gone immediately, and
            # redis sets SO_REUSEADDR, so TIME_WAIT leftovers do not block the bind.
            self._spawn_and_wait(self._port)
            return self
        last_error: Exception | None = None
        for _ in range(self._port_attempts):
            port = _free_port()
            try:
                self._spawn_and_wait(port)
            except RedisServerError as exc:  # most likely lost the race for the port
                last_error = exc
                continue
            self._port = port
            return self
        raise RedisServerError(
            f"could not start redis-server after {self._port_attempts} attempts"
        ) from last_error

    def kill(self) -> None:
        """SIGKILL the server and wait for it to be gone (no graceful shutdown)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=self._stop_timeout)
        self._reap()

    def stop(self) -> None:
        """SIGTERM the server, wait; SIGKILL it if it does not exit in time."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=self._stop_timeout)
        self._reap()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it holds its connections and answers nothing."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT)."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGCONT)

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its temp dir."""
        self.stop()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {HOST}:{self._port} {state}>"

    # -- internals ------------------------------------------------------------------------

    def _argv(self, port: int, directory: str) -> list[str]:
        """The command line of one start; a subclass adds its own options (a cluster node)."""
        return [
            self._binary,
            "--port", str(port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", directory,
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", "",
        ]  # fmt: skip

    def _spawn_and_wait(self, port: int) -> None:
        assert self._tmpdir is not None
        argv = self._argv(port, self._tmpdir.name)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._proc = proc
        deadline = time.monotonic() + self._startup_timeout
        delay = 0.005
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._reap()
                raise RedisServerError(
                    f"redis-server exited with code {proc.returncode} on port {port}"
                )
            if ping(port, timeout=0.25):
                if _server_pid(port) == proc.pid:
                    return
                # Someone else answers on this port (lost the race): ours will exit.
                if proc.poll() is None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=0.5)
                if proc.poll() is not None:
                    continue  # reported as "exited" at the top of the loop
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        self.kill()
        raise RedisServerError(f"redis-server on port {port} not ready in {self._startup_timeout}s")

    def _reap(self) -> None:
        """Forget a finished process (its ``returncode`` is set, so no ResourceWarning)."""
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            self._proc = None
