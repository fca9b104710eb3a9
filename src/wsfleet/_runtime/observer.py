"""What the runtime tells an observer of its fan-outs (a metrics exporter), and nothing else.

Counters that only go up live in the parts and are read by ``manager.stats()`` when someone
asks: they cost nothing between two reads. A distribution (how large the messages are, how
long they wait) cannot be read that way after the fact, so the runtime reports each fan-out
to an observer, if one is attached. With none, the hot path pays one attribute check per
fan-out call (``Fleet.deliver``) and one per flusher round (``Outbox``), nothing per
recipient.

An observer runs on the event loop's thread, inside the fan-out call: it must be quick,
never block and never raise (an exception would reach the application's ``broadcast``).
The runtime knows nothing of Prometheus: ``wsfleet.metrics`` implements this protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["FleetObserver", "ObserverHandle", "Observers"]


class FleetObserver(Protocol):
    """Told of every fan-out on this node, and of how long the flusher took to write them."""

    def fanned_out(self, size: int, recipients: int) -> None:
        """A message of ``size`` bytes was queued for ``recipients`` connections here.

        Once per fan-out call (``broadcast``, ``send_to_*``, ``Connection.send``, and a
        fan-out another node published), whatever the number of recipients.
        """

    def flushed(self, seconds: float) -> None:
        """The flusher handed its batches to the transports ``seconds`` after the first
        fan-out call it wrote (once per flusher round that wrote a fan-out)."""


class ObserverHandle:
    """What ``ConnectionManager.add_observer`` returns: ``remove()`` detaches the observer."""

    __slots__ = ("_detach", "observer")

    def __init__(self, observer: FleetObserver, detach: Callable[[ObserverHandle], bool]) -> None:
        self.observer = observer
        self._detach = detach

    def remove(self) -> bool:
        """Stop reporting to this observer; ``False`` if it was already removed."""
        return self._detach(self)


class Observers:
    """Several observers seen as one (the runtime holds one reference, whatever the count)."""

    __slots__ = ("_all",)

    def __init__(self, observers: tuple[FleetObserver, ...]) -> None:
        self._all = observers

    def fanned_out(self, size: int, recipients: int) -> None:
        for observer in self._all:
            observer.fanned_out(size, recipients)

    def flushed(self, seconds: float) -> None:
        for observer in self._all:
            observer.flushed(seconds)
