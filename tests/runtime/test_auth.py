"""The authentication part alone: what a refusal logs is safe to log."""

from __future__ import annotations

import pytest

from wsfleet import Unauthenticated
from wsfleet._runtime.auth import Authenticator

pytestmark = pytest.mark.anyio


def scope(path: str) -> dict[str, object]:
    return {
        "type": "websocket",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 5000),
    }


@pytest.mark.parametrize(
    "path",
    [
        "/ws\n2026-12-03 14:00:00,000 wsfleet INFO login-ok",
        "/ws\x1b[2J\x1b[31mRED",
        "/" + "x" * 5000,
    ],
    ids=["forged-line", "escapes", "long"],
)
async def test_a_refusal_logs_one_line_whatever_path_the_client_chose(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    auth = Authenticator(lambda handshake: None)
    with caplog.at_level("INFO", logger="wsfleet"), pytest.raises(Unauthenticated):
        await auth.identify(scope(path))
    (line,) = [r.getMessage() for r in caplog.records if r.name == "wsfleet"]
    assert "\n" not in line
    assert "\x1b" not in line
    assert len(line) < 300
    assert line.startswith("refused a socket: unauthenticated (/")
