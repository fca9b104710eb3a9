"""The demo's ``/metrics``: what a Prometheus server would scrape from it.

The demo serves its pages from the WebSocket server's ``process_request`` hook, so the
metrics are one more page there, rendered from a ``FleetCollector`` in a registry of the
demo's own. prometheus-client is an extra (``wsfleet[prometheus]``, part of
``wsfleet[demo]``): without it the demo runs all the same, and ``/metrics`` says what to
install.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .._manager import ConnectionManager

__all__ = ["Exposition", "exposition"]

logger = logging.getLogger("wsfleet.demo")

#: The body and its content type, rendered at each request.
Exposition = Callable[[], tuple[bytes, str]]


@contextmanager
def exposition(manager: ConnectionManager) -> Iterator[Exposition | None]:
    """The manager's metrics for as long as the block lasts; ``None`` without the extra."""
    try:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        from ..metrics import FleetCollector
    except ImportError as exc:
        logger.info("no /metrics in the demo: %s", exc)
        yield None
        return
    registry = CollectorRegistry()

    def render() -> tuple[bytes, str]:
        return generate_latest(registry), CONTENT_TYPE_LATEST

    with FleetCollector(manager, registry=registry):
        yield render
