"""The connection transition table: the only place a transition is defined.

Rules of the table
------------------
1. A row is (trigger, sources, destination, guards, why). ``NEW`` as a source means "a
   connection that does not exist yet": those rows are how a connection is born.
2. A (source, destination) pair not in the table is refused with ``InvalidTransition`` and
   changes nothing. Asking for the state a connection is already in is always allowed and
   does nothing (no callback, no new timestamp).
3. Guards are named here and defined in ``machine.GUARDS``; ``unless`` is a negated guard. When
   several rows join the same pair, they are tried in table order and the first whose guards
   pass wins; if none passes, the request is refused with the guards' reason.
4. Rows say nothing about what happens on entering a state (timestamps, attempt counters,
   retry scheduling): that lives in the per-state hooks of ``machine.py``, so one table
   drives the running machine, the diagrams, the docs and the property tests alike.
5. DISCONNECTED is final: no row leaves it. Whatever could still bring a connection back (a
   retry policy with attempts left, a resume window) keeps it in ERROR or RECONNECTING; a
   connection that reaches DISCONNECTED is over, and its owner forgets it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from .states import ConnectionState

__all__ = ["NEW", "TABLE", "Rule", "births", "rules_by_pair"]

C = ConnectionState.CONNECTED
I = ConnectionState.IDLE  # noqa: E741  (the table reads better with one-letter states)
E = ConnectionState.ERROR
R = ConnectionState.RECONNECTING
D = ConnectionState.DISCONNECTED

NEW: Final = None
"""Source of the rows that create a connection."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the table."""

    trigger: str
    sources: tuple[ConnectionState | None, ...]
    dest: ConnectionState
    why: str
    conditions: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()


# fmt: off
TABLE: Final[tuple[Rule, ...]] = (
    Rule("open",        (NEW,),     C, "registered, or an inbound socket opened"),
    Rule("dial",        (NEW,),     R, "an outbound connection's first dial is under way"),
    Rule("go_idle",     (C,),       I, "no inbound activity for the idle period"),
    Rule("activity",    (I,),       C, "a message arrived (a pong proves a peer alive, not busy)"),
    Rule("close",       (C, I),     D, "clean close, from either side"),
    Rule("fail",        (C, I, R),  E, "I/O failure, abnormal close, heartbeat timeout, failed attempt"),
    Rule("retry",       (E,),       R, "the retry policy's delay has passed", conditions=("can_retry",)),
    Rule("give_up",     (E,),       D, "no policy, attempts exhausted or time budget spent", unless=("can_retry",)),
    Rule("stop",        (E, R),     D, "stopped by its owner while retrying"),
    Rule("reconnected", (R,),       C, "an attempt succeeded"),
)
# fmt: on


def births() -> Mapping[ConnectionState, Rule]:
    """The states a connection may start in, each with the row that allows it."""
    return {rule.dest: rule for rule in TABLE if NEW in rule.sources}


def rules_by_pair() -> Mapping[tuple[ConnectionState, ConnectionState], tuple[Rule, ...]]:
    """Rows joining each (source, destination) pair of existing states, in table order."""
    pairs: dict[tuple[ConnectionState, ConnectionState], list[Rule]] = {}
    for rule in TABLE:
        for source in rule.sources:
            if source is not None:
                pairs.setdefault((source, rule.dest), []).append(rule)
    return {pair: tuple(rules) for pair, rules in pairs.items()}
