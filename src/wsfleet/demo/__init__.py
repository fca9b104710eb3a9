"""``wsfleet demo``: a chat and a live dashboard of its fleet, served by the demo itself.

Run ``wsfleet demo`` and open http://127.0.0.1:8000/ (the chat) in a few tabs and
http://127.0.0.1:8000/dashboard next to them: every connection with its state, the state
changes as they happen, the counters of ``manager.stats()``, the state diagram, and buttons
that make the machine move (force idle, drop a connection abnormally, stall a client, kill
everything). http://127.0.0.1:8000/metrics is what a Prometheus server would scrape
(``wsfleet.metrics``; the dashboard links to it).

Everything runs on one port, in one process, on asyncio or trio (``--backend``): the
websockets library's server answers the page requests itself (``process_request``) and
hands the WebSockets to a ``ConnectionManager``. ``--redis URL`` puts the manager on the
Redis backplane, so demos on several ports share one fleet.

The modules, in the order a request meets them: ``_pages`` (HTTP), ``_server`` (the
listening server and the lifetime of everything), ``_inbound`` (what a socket receives,
read as anyone may have written it), ``_chat`` (the chat protocol), ``_controls`` (the
dashboard's socket and buttons), ``_board`` (what dashboards see, pushed in batches and
bounded in size), ``_policies`` (short heartbeat, retry and overflow policies), ``_origins``
(which pages may open the WebSockets).

It is a demo: anyone who can reach its port can press the dashboard's buttons. It listens
on 127.0.0.1 unless told otherwise, and its WebSockets refuse pages of other sites (the
``Origin`` check, widened by ``--allow-origin``), since a browser would otherwise let any
page it shows reach 127.0.0.1.
"""

from __future__ import annotations

from ._server import Demo, open_demo, run

__all__ = ["Demo", "open_demo", "run"]
