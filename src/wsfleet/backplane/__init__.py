"""Many processes, one fleet: the backplane, and what a store for it implements.

The public interface::

    from wsfleet.backplane import Backplane, InMemoryHub, Node, Store, StoreSession

* ``Backplane``: connects a manager to the other nodes of its fleet through a store
  (``ConnectionManager(backplane=...)``);
* ``Store``, ``StoreSession``: what a store for another engine subclasses (``store``
  describes the contract); ``InMemoryHub`` is one inside a process, ``RedisStore``
  (``wsfleet.adapters.redis``) one over Redis;
* ``Node``: what the backplane needs from the node it serves (the manager provides it);
* ``DEFAULT_MAX_MESSAGE_SIZE``: the default bound on one envelope on the bus.

The modules behind it, each with one concern:

* ``backplane``: the ``Backplane``, which ties the parts together;
* ``link``: the connection to the store, its lifecycle, the receive loop, the heartbeat
  and the leases; ``publisher``: the queue of what this node publishes, and its loop;
* ``replication``: membership across nodes, the view of the others and this node's records;
* ``view``: the ``ClusterView`` (no I/O); ``wire``: the envelopes (no I/O);
  ``signing``: signed frames, replays refused (no I/O);
  ``accounting``: numbering sends and counting the missed ones (no I/O);
* ``store``, ``hub``, ``node``: the interfaces above and the in-process store.

Importing this package loads no event loop library: ``Backplane`` and ``InMemoryHub`` (which
use anyio) are loaded on first use, so the modules without I/O stay importable alone.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .node import Node
from .store import Store, StoreSession
from .wire import DEFAULT_MAX_MESSAGE_SIZE

if TYPE_CHECKING:
    from .backplane import Backplane
    from .hub import InMemoryHub

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Backplane",
    "InMemoryHub",
    "Node",
    "Store",
    "StoreSession",
]

_LAZY = {"Backplane": ".backplane", "InMemoryHub": ".hub"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wsfleet.backplane' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names, not this file's helpers."""
    return sorted(__all__)
