"""The core does no I/O, and importing wsfleet pulls in no optional integration."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

IO_MODULES = ["anyio", "trio", "asyncio", "websockets", "trio_websocket", "starlette", "coredis"]
OPTIONAL = ["trio", "trio_websocket", "websockets", "starlette", "coredis"]


def loaded_after(statement: str, candidates: list[str]) -> list[str]:
    """Run ``statement`` in a fresh interpreter and list which candidates it imported."""
    code = (
        "import json, sys\n"
        f"{statement}\n"
        f"print(json.dumps(sorted(m for m in {candidates!r} if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(out.stdout)
    return loaded


@pytest.mark.parametrize(
    "package",
    [
        "wsfleet.fsm",
        "wsfleet.policies",
        "wsfleet.backplane.wire",
        "wsfleet.backplane.accounting",
        "wsfleet.backplane.view",
    ],
)
def test_the_core_imports_no_event_loop_or_socket_library(package: str) -> None:
    assert loaded_after(f"import {package}", IO_MODULES) == []


def test_the_backplane_interface_imports_no_event_loop_until_it_is_used() -> None:
    """A store's author imports ``Store`` and ``StoreSession`` without pulling in anyio;
    ``Backplane`` and ``InMemoryHub`` load it on first use."""
    statement = "from wsfleet.backplane import DEFAULT_MAX_MESSAGE_SIZE, Node, Store, StoreSession"
    assert loaded_after(statement, IO_MODULES) == []
    assert "anyio" in loaded_after("from wsfleet.backplane import Backplane", IO_MODULES)


def test_importing_wsfleet_imports_no_optional_integration() -> None:
    assert loaded_after("import wsfleet", OPTIONAL) == []
