"""The conformance suite: what a user relies on, checked on every way wsfleet is served.

Every check runs once per combo of ``servers.COMBOS`` (websockets on asyncio and on trio,
trio-websocket, a FastAPI app under uvicorn and under hypercorn on asyncio and on trio),
with real clients on 127.0.0.1, the default policies and each server's defaults, on a loop
started as applications start theirs (``servers.run_as_users_do``):

* ``test_with_default_policies``: ``HeartbeatPolicy()`` for longer than it takes to act
  (45 s, all combos at once, in the background): idle clients stay, a silent peer goes;
* ``test_keepalive``: the same with short periods, through ten of them;
* ``test_slow_consumer``: a client that stops reading is evicted alone;
* ``test_closes``: clean and abrupt closes, leaving the manager's block, stopping the server;
* ``test_hostile_input``: bad identifiers and names, oversize and broken frames, text no
  transport can send, a flood; each harms its sender only, and the server goes on serving.

A new adapter, server or loop is added to ``COMBOS`` or it does not ship. Where a server
tells the application something else than what happened, the check says so and asserts
what the user gets (``Combo``'s properties name each such difference).
"""
