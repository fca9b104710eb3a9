"""The pure core: states, the transition table and the machine that runs it.

Nothing here does I/O or imports an event loop; a test proves it in a fresh interpreter.
"""

from .clock import Clock, ManualClock, MonotonicClock
from .machine import FleetMachine, Lifecycle, StateChange
from .states import ConnectionState
from .table import NEW, TABLE, Rule

__all__ = [
    "NEW",
    "TABLE",
    "Clock",
    "ConnectionState",
    "FleetMachine",
    "Lifecycle",
    "ManualClock",
    "MonotonicClock",
    "Rule",
    "StateChange",
]
