"""The architecture the docs draw is the one the code has.

The import-linter contracts in ``pyproject.toml`` hold the layers and their direction (CI
runs ``lint-imports``); this file checks what imports cannot show: no module reaches into
the manager's private names, and every module stays small enough to read.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from support import ROOT

SRC = ROOT / "src" / "wsfleet"

#: ``manager._something`` or ``_manager._something``: the manager's private names.
PRIVATE_USE = re.compile(r"\b_?manager\._[a-z]")


def test_no_module_but_the_managers_own_uses_its_private_names() -> None:
    offenders = [
        f"{path.relative_to(SRC)}:{number}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "_manager.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PRIVATE_USE.search(line)
    ]
    assert offenders == []


def test_modules_stay_small_enough_to_read() -> None:
    """A module past ~600 lines is asking to be split by responsibility."""
    long = {
        str(path.relative_to(SRC)): lines
        for path in sorted(SRC.rglob("*.py"))
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > 700
    }
    assert long == {}


def test_the_import_contracts_hold() -> None:
    """The same check CI runs: a back edge (a part importing the manager, an adapter
    importing the runtime, the core importing an event loop) fails here first."""
    command = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(command), "--no-cache"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
