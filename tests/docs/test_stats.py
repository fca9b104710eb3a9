"""What ``stats()`` reports is documented where users read it, and stays so.

Every field of ``FleetStats`` (and ``as_dict()``'s extra ``dropped``) is in the README's stats
table; every reason a drop can be counted under, as the runtime writes it, is in the table of
docs/explanation/slow-consumers.md.
"""

from __future__ import annotations

import dataclasses
import re

from support import ROOT
from wsfleet import FleetStats

RUNTIME = ROOT / "src" / "wsfleet" / "_runtime"

#: Where a reason is written as a literal: a drop counted, a queue discarded, an eviction,
#: a heartbeat's verdict (its reason is the eviction's).
REASON = re.compile(
    r'(?:count_drop\(|discard\(conn, |evict\(conn, [A-Z_]+, |_dead\(conn, |drops\[)"([^"]+)"'
)


def readme_stats_table() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("| field | what it counts |")
    return readme[start : readme.index("\n\n", start)]


def test_every_stats_field_is_in_the_readme_table() -> None:
    table = readme_stats_table()
    names = {field.name for field in dataclasses.fields(FleetStats)} | {"dropped"}
    missing = sorted(name for name in names if f"`{name}`" not in table)
    assert not missing, f"not in the README's stats table: {missing}"


def test_every_drop_reason_is_explained() -> None:
    page = (ROOT / "docs" / "explanation" / "slow-consumers.md").read_text(encoding="utf-8")
    reasons = {
        reason
        for path in RUNTIME.glob("*.py")
        for reason in REASON.findall(path.read_text(encoding="utf-8"))
    }
    assert {"slow consumer", "heartbeat timeout", "unregistered"} <= reasons  # it finds them
    outbound = reasons - {"too big"}  # "too big" counts an inbound message: README's table
    missing = sorted(reason for reason in outbound if f'`"{reason}"`' not in page)
    assert not missing, f"not in slow-consumers.md's table of drop reasons: {missing}"
    assert '`"too big"`' in readme_stats_table()
