"""The flooder of flood_bench.py: one client sending tiny messages as fast as TCP takes them.

    python benchmarks/_flood_client.py <port> <seconds>

It speaks just enough WebSocket to flood: the opening handshake, then a prebuilt run of
masked one-byte text frames written again and again, while a thread throws away what the
server sends. Cut off (a rate limit that closes), it connects again at once, as an attacker
would. Stops after ``seconds`` and prints ``sent <frames> connects <n>``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import sys
import threading
import time

#: A masked text frame with the payload "x" and a zero mask key (the key must be sent, not
#: be random): FIN + text, MASK + length 1, the key, the payload.
FRAME = b"\x81\x81\x00\x00\x00\x00x"
RUN = 1000
BLOB = FRAME * RUN


def handshake(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws?id=flooder HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        response += chunk
    if not response.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(response.split(b"\r\n", 1)[0].decode(errors="replace"))
    return sock


def drain(sock: socket.socket) -> None:
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def main(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    sent = connects = 0
    while time.monotonic() < deadline:
        try:
            sock = handshake(port)
        except OSError:
            time.sleep(0.01)
            continue
        connects += 1
        threading.Thread(target=drain, args=(sock,), daemon=True).start()
        # A blocked write is ended at the deadline by shutting the socket from a timer (a
        # timeout mid-run would leave half a frame behind and corrupt the stream).
        stop = threading.Timer(max(0.0, deadline - time.monotonic()), shut, args=(sock,))
        stop.start()
        try:
            while time.monotonic() < deadline:
                sock.sendall(BLOB)
                sent += RUN
        except OSError:
            pass  # cut off, or the deadline: connect again, or stop
        finally:
            stop.cancel()
            sock.close()
    sys.stdout.write(f"sent {sent} connects {connects}\n")


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]))
