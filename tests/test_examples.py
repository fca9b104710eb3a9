"""Every example runs, on both event loops, and does what its docstring says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_quickstart_runs_a_fleet_in_memory(backend: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), "--backend", backend],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = result.stdout
    assert "broadcast -> 5 connections" in out
    assert "alice-1 received ['hello everyone', 'hi alice', 'lobby news']" in out
    assert "slow was closed with 1008" in out
    assert "CONNECTED -> ERROR        slow consumer" in out
    assert "CONNECTED -> ERROR        heartbeat timeout" in out
    assert "CONNECTED -> IDLE" in out
    assert "IDLE -> CONNECTED    activity" in out
    assert "bob's socket closed with 1001" in out


def test_the_readme_example_runs() -> None:
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "['hello']" in result.stdout
    assert "alice None -> ConnectionState.CONNECTED" in result.stdout
