"""Helper processes spoken to by lines: the servers and clients of the loopback benchmarks."""

from __future__ import annotations

import contextlib
import queue
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO

#: The interpreter that runs this benchmark runs its helpers too (with the same environment,
#: so ``PYTHONPATH`` picks the wsfleet they import).
PYTHON = sys.executable


class Failed(Exception):
    """A helper process failed, went away or did not answer in time."""


class Child:
    """A helper process spoken to by lines on stdin/stdout; stderr goes to a temporary file."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        # Closed in kill(): it lives as long as the process it logs.
        self.log: IO[str] = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise Failed(f"{self.name} is gone: {exc}; {self.tail()}") from exc

    def expect(self, *words: str, timeout: float) -> list[str]:
        """The next line starting with one of ``words``: [word, rest...]."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise Failed(f"{self.name}: no {'/'.join(words)} within {timeout:.0f} s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise Failed(f"{self.name} exited ({self.proc.poll()}); {self.tail()}")
            parts = line.split(" ", 1)
            if parts[0] in words:
                return parts
            if parts[0] == "failed":
                raise Failed(f"{self.name}: {' '.join(parts)}")

    def tail(self) -> str:
        self.log.flush()
        self.log.seek(0)
        text = self.log.read().strip().splitlines()
        return " | ".join(text[-6:]) or "no stderr"

    def kill(self) -> None:
        if self.log.closed:  # killed already (a failed variant is let go early)
            return
        with contextlib.suppress(OSError, Failed):
            self.send("quit")
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()
