"""The runtime layer: one node's connections and the parts that keep them.

Internal: import the public names from ``wsfleet``. The layer sits between the manager (the
facade that checks what users pass) and the pure core (``wsfleet.fsm``, ``wsfleet.policies``):

* ``fleet``: the runtime itself; the one place a state change takes effect;
* ``registry``, ``routing``: who is connected, in which groups; who a fan-out reaches;
* ``outbox``: bounded queues, one flusher, writer tasks for peers that push back;
* ``timers`` (over ``deadlines``): heartbeats, idleness, retries on one heap;
* ``callbacks``: the application's state-change callbacks, each in a lane of its own;
* ``resumption``: held sessions and their one-use tokens;
* ``session``, ``outbound``: a server handler's socket; a client connection the manager dials;
* ``connection``, ``context``, ``loop``, ``stats``: what the parts share;
* ``observer``: what an observer of the fan-outs (``wsfleet.metrics``) is told.

Each part is built with what it needs (the context, a policy, a protocol for what it
reports) and imports none of the others but ``connection`` and ``context``; only ``fleet``
ties them together. ``pyproject.toml``'s import-linter contracts keep it so.
"""
