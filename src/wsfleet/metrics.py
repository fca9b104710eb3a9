"""Prometheus metrics for a manager: its ``stats()`` at each scrape, and fan-out histograms.

Needs the ``prometheus`` extra (``pip install 'wsfleet[prometheus]'``)::

    from prometheus_client import make_asgi_app
    from wsfleet.metrics import FleetCollector

    collector = FleetCollector(manager)       # in prometheus_client's default registry
    app.mount("/metrics", make_asgi_app())    # FastAPI / Starlette

or on a port of its own: ``start_http_server(manager, 9108)``.

Two sources, two costs:

* **Counters and gauges** (connections by state, queues, drops by reason ...) are read from
  one ``manager.stats()`` call per scrape: nothing is counted twice and nothing runs
  between two scrapes.
* **Histograms** (message size, recipients, fan-out latency) need each fan-out as it
  happens: the collector attaches itself to the manager as an observer
  (``ConnectionManager.add_observer``). Each fan-out call then adds a few list increments;
  a manager with no collector pays one attribute check per call.

Labels are few and fixed: ``state`` (the five connection states) and ``reason`` (the drop
reasons, a closed set). Identifiers and groups never become labels: a label per user would
make a time series per user.

Several managers in one process: a registry refuses a second collector of the same names
(``ValueError``: duplicated timeseries), so give each manager a registry of its own (served
on a path or a port each: ``start_http_server`` does so), and constant ``labels`` tell their
series apart once scraped (``labels={"manager": "chat"}``); or a ``namespace`` each.
"""

from __future__ import annotations

import math
import re
import threading
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from itertools import pairwise
from types import TracebackType
from typing import Final, Self
from wsgiref.simple_server import WSGIServer

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client import start_http_server as _start_http_server
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError as exc:  # the extra is not installed
    raise ImportError(
        f"wsfleet.metrics needs prometheus-client ({exc}): pip install 'wsfleet[prometheus]'"
    ) from exc

from ._manager import ConnectionManager
from ._runtime.observer import ObserverHandle
from ._runtime.stats import FleetStats
from .errors import InvalidArgument, WrongType
from .fsm.states import ConnectionState

__all__ = [
    "LATENCY_BUCKETS",
    "RECIPIENT_BUCKETS",
    "SIZE_BUCKETS",
    "FleetCollector",
    "MetricsServer",
    "start_http_server",
]

#: Fan-out latency (seconds): a flusher round takes well under a millisecond on a quiet
#: server, tens of milliseconds on a busy one; past a second the server is far behind.
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

#: Message size (bytes): powers of 4 from a short chat line to the default 4 MiB limit.
SIZE_BUCKETS: Final = (
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
)

#: Connections one fan-out was for: one socket, a room, the whole fleet.
RECIPIENT_BUCKETS: Final = (0.0, 1.0, 2.0, 5.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0)

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
#: The label names the collector itself uses (and Prometheus' own).
_RESERVED = frozenset({"state", "reason", "le", "quantile", "job", "instance"})

#: The backplane's counters (``stats().backplane``) exported, by key: (name, help).
_BACKPLANE_COUNTERS: Final = {
    "published": ("backplane_published_messages", "Fan-outs published for the other nodes."),
    "received": ("backplane_received_messages", "Fan-outs received from the other nodes."),
    "malformed": ("backplane_malformed_messages", "Backplane messages skipped as malformed."),
    "late": ("backplane_late_messages", "Backplane messages that came after being counted."),
    "nodes expired": ("backplane_expired_nodes", "Other nodes dropped for going silent."),
    "replayed": ("backplane_replayed_messages", "Signed frames refused as copies of earlier ones."),
    "stale": ("backplane_stale_messages", "Signed frames refused as signed too long ago."),
    "too large": ("backplane_oversize_messages", "Frames refused unread for their size."),
}


class _Histogram:
    """Bucket counts kept by the observer: a list increment per value, read at scrape time.

    Written on the event loop's thread, read by the scraper's; each read is a copy of the
    list (atomic), and the count is taken from that copy, so a scrape is self-consistent
    (the sum may lag one observation behind).
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: over every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        counts = list(self.counts)
        cumulative = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, math.inf), counts, strict=True):
            cumulative += count
            out.append(("+Inf" if bound == math.inf else repr(float(bound)), cumulative))
        return out


def _check_buckets(name: str, bounds: Sequence[float]) -> tuple[float, ...]:
    if isinstance(bounds, str | bytes) or not isinstance(bounds, Sequence):
        raise WrongType(f"{name} must be a sequence of numbers, got {bounds!r}")
    values = tuple(bounds)
    if not values:
        raise InvalidArgument(f"{name} must have at least one bound")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WrongType(f"{name} must hold numbers, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise InvalidArgument(f"{name} must hold finite numbers >= 0, got {value!r}")
    if any(b <= a for a, b in pairwise(values)):
        raise InvalidArgument(f"{name} must be strictly increasing, got {values!r}")
    return tuple(float(value) for value in values)


def _check_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise WrongType(f"labels must be a mapping of str to str, got {labels!r}")
    checked: dict[str, str] = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise WrongType(f"labels must map str to str, got {key!r}: {value!r}")
        if not _LABEL.match(key) or key.startswith("__") or key in _RESERVED:
            raise InvalidArgument(
                f"{key!r} cannot be a label name here (a name like 'manager', not one of "
                f"{sorted(_RESERVED)} nor starting with '__')"
            )
        checked[key] = value
    return checked


class FleetCollector:
    """A Prometheus collector of one manager's fleet (the custom-collector protocol).

    :param manager: the manager to report; it may be entered before or after.
    :param registry: where to register (prometheus_client's default one unless given);
        ``None`` registers nowhere (``registry.register(collector)`` is then yours to do).
    :param namespace: the prefix of every metric name (``wsfleet_connections``).
    :param labels: constant labels on every series (``{"manager": "chat"}``): to tell
        several managers apart once scraped. ``state`` and ``reason`` are the collector's.
    :param latency_buckets: the fan-out latency histogram's upper bounds, in seconds.
    :param size_buckets: the message size histogram's, in bytes.
    :param recipient_buckets: the recipients histogram's, in connections.

    ``close()`` (or leaving ``with collector:``) unregisters it and detaches it from the
    manager: the fan-outs are then no longer observed.
    """

    def __init__(
        self,
        manager: ConnectionManager,
        *,
        registry: CollectorRegistry | None = REGISTRY,
        namespace: str = "wsfleet",
        labels: Mapping[str, str] | None = None,
        latency_buckets: Sequence[float] = LATENCY_BUCKETS,
        size_buckets: Sequence[float] = SIZE_BUCKETS,
        recipient_buckets: Sequence[float] = RECIPIENT_BUCKETS,
    ) -> None:
        if not isinstance(manager, ConnectionManager):
            raise WrongType(f"manager must be a ConnectionManager, got {manager!r}")
        if registry is not None and not isinstance(registry, CollectorRegistry):
            raise WrongType(f"registry must be a CollectorRegistry or None, got {registry!r}")
        if not isinstance(namespace, str) or not _NAME.match(namespace):
            raise InvalidArgument(
                f"namespace must be a metric name prefix like 'wsfleet', got {namespace!r}"
            )
        self.manager = manager
        self.namespace = namespace
        self.labels = _check_labels(labels)
        self._latency = _Histogram(_check_buckets("latency_buckets", latency_buckets))
        self._size = _Histogram(_check_buckets("size_buckets", size_buckets))
        self._recipients = _Histogram(_check_buckets("recipient_buckets", recipient_buckets))
        self._registry = registry
        self._handle: ObserverHandle | None = manager.add_observer(self)
        if registry is not None:
            try:
                registry.register(self)
            except Exception:
                self._handle.remove()
                self._handle = None
                raise

    # -- the observer (on the event loop, inside each fan-out) ---------------------------------

    def fanned_out(self, size: int, recipients: int) -> None:
        self._size.observe(size)
        self._recipients.observe(recipients)

    def flushed(self, seconds: float) -> None:
        self._latency.observe(seconds)

    # -- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        """Unregister from the registry and stop observing the manager; idempotent."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        handle.remove()
        if self._registry is not None:
            self._registry.unregister(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the collector (at each scrape; from any thread) ---------------------------------------

    def describe(self) -> Iterator[Metric]:
        """The families the registry checks for duplicates when this collector joins it."""
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        """The metric families, from one ``stats()`` call."""
        stats = self.manager.stats()
        yield from self._fleet(stats)
        yield from self._counters(stats)
        if stats.backplane_state is not None and stats.backplane is not None:
            yield from self._backplane(stats.backplane_state, stats.backplane)
        yield from self._histograms()

    def _name(self, name: str) -> str:
        return f"{self.namespace}_{name}"

    def _gauge(self, name: str, help: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(self._name(name), help, labels=list(self.labels))
        family.add_metric(list(self.labels.values()), value)
        return family

    def _counter(self, name: str, help: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(self._name(name), help, labels=list(self.labels))
        family.add_metric(list(self.labels.values()), value)
        return family

    def _by(
        self, family: GaugeMetricFamily | CounterMetricFamily, values: Mapping[str, float]
    ) -> GaugeMetricFamily | CounterMetricFamily:
        const = list(self.labels.values())
        for key, value in sorted(values.items()):
            family.add_metric([*const, key], value)
        return family

    def _fleet(self, stats: FleetStats) -> Iterator[Metric]:
        names = [*self.labels, "state"]
        yield self._by(
            GaugeMetricFamily(
                self._name("connections"), "Registered connections, by state.", labels=names
            ),
            stats.states,
        )
        yield self._gauge("identifiers", "Identifiers with a socket here.", stats.identifiers)
        yield self._gauge("groups", "Groups with a member here.", stats.groups)
        yield self._gauge(
            "queued_messages", "Messages waiting in the connections' queues.", stats.queued_messages
        )
        yield self._gauge(
            "queued_bytes", "Bytes waiting in the connections' queues.", stats.queued_bytes
        )
        backpressure = self.manager.backpressure
        if backpressure is not None:
            yield self._gauge(
                "backpressure_max_queued_bytes",
                "Queued bytes over which fan-out calls wait for the writers (BackpressurePolicy).",
                backpressure.max_queued_bytes,
            )

    def _counters(self, stats: FleetStats) -> Iterator[Metric]:
        reasons = [*self.labels, "reason"]
        yield self._counter(
            "sent_messages", "Messages handed to the transports.", stats.sent_messages
        )
        yield self._by(
            CounterMetricFamily(
                self._name("dropped_messages"),
                "Outgoing messages discarded, by reason.",
                labels=reasons,
            ),
            stats.drops,
        )
        yield self._counter(
            "received_messages", "Messages the sessions received.", stats.received_messages
        )
        yield self._by(
            CounterMetricFamily(
                self._name("inbound_dropped_messages"),
                "Received messages refused before the application saw them, by reason.",
                labels=reasons,
            ),
            stats.inbound_drops,
        )
        yield self._counter(
            "inbound_waits",
            "Received messages held back until their sender was within its rate limit.",
            stats.inbound_waits,
        )
        yield self._counter(
            "callback_errors", "State-change callbacks that raised.", stats.callback_errors
        )
        yield self._counter(
            "callback_timeouts",
            "State-change callbacks abandoned after callback_timeout.",
            stats.callback_timeouts,
        )
        yield self._counter("pings_sent", "Pings written.", stats.pings_sent)
        yield self._counter(
            "heartbeat_timeouts",
            "Connections failed for an unanswered ping.",
            stats.heartbeat_timeouts,
        )
        yield self._counter(
            "producer_waits",
            "Fan-out calls that waited because the whole fleet was behind.",
            stats.producer_waits,
        )
        yield self._counter(
            "producer_wait_seconds",
            "Seconds fan-out calls waited for the writers, in all.",
            stats.producer_wait_seconds,
        )

    def _backplane(self, state: str, counters: Mapping[str, int]) -> Iterator[Metric]:
        yield self._by(
            GaugeMetricFamily(
                self._name("backplane_state"),
                "The link to the other nodes: 1 for its current state, 0 for the others.",
                labels=[*self.labels, "state"],
            ),
            {name: float(name == state) for name in ConnectionState.__members__},
        )
        yield self._gauge(
            "backplane_queued_sends",
            "Fan-outs waiting to be published.",
            counters.get("queued sends", 0),
        )
        for key, (name, help) in _BACKPLANE_COUNTERS.items():
            yield self._counter(name, help, counters.get(key, 0))
        refused = "refused: "
        yield self._by(
            CounterMetricFamily(
                self._name("backplane_refused_messages"),
                "Other nodes' messages a node refused to act on (unknown sender, bounds), "
                "by reason.",
                labels=[*self.labels, "reason"],
            ),
            {
                key.removeprefix(refused): value
                for key, value in counters.items()
                if key.startswith(refused)
            },
        )
        prefix = "link "
        yield self._by(
            CounterMetricFamily(
                self._name("backplane_link_changes"),
                "Changes of the link's state, by the state entered.",
                labels=[*self.labels, "state"],
            ),
            {
                key.removeprefix(prefix).upper(): value
                for key, value in counters.items()
                if key.startswith(prefix)
            },
        )

    def _histograms(self) -> Iterator[Metric]:
        const = list(self.labels.values())
        for histogram, name, help in (
            (
                self._latency,
                "fanout_latency_seconds",
                "Seconds from a flusher round's first fan-out call to its batches handed to "
                "the transports (peers that push back are written later by their own task).",
            ),
            (
                self._size,
                "message_size_bytes",
                "Size of each fanned-out message, once per fan-out call.",
            ),
            (
                self._recipients,
                "fanout_recipients",
                "Connections on this node each fan-out call was for (queued, or dropped).",
            ),
        ):
            family = HistogramMetricFamily(self._name(name), help, labels=list(self.labels))
            buckets = histogram.buckets()
            family.add_metric(const, buckets, histogram.total)
            yield family


class MetricsServer:
    """What ``start_http_server`` returns: where it listens; ``close()`` stops it."""

    def __init__(
        self,
        collector: FleetCollector,
        registry: CollectorRegistry,
        server: WSGIServer,
        thread: threading.Thread,
        host: str,
        port: int,
    ) -> None:
        self.collector = collector
        self.registry = registry
        self.host = host
        self.port = port
        self._server = server
        self._thread = thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving, close the socket, detach the collector; idempotent."""
        self.collector.close()
        if self._thread.is_alive():
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_http_server(
    manager: ConnectionManager,
    port: int,
    addr: str = "127.0.0.1",
    *,
    namespace: str = "wsfleet",
    labels: Mapping[str, str] | None = None,
) -> MetricsServer:
    """Serve the manager's metrics on a port of their own, from a daemon thread.

    The collector goes in a registry of its own (so several managers may each have a
    port). ``port=0`` takes a free port (``server.port`` says which). Loopback by default:
    listen on ``"0.0.0.0"`` only where the network is yours. Every path answers with the
    metrics (``/metrics`` by convention). Scrapes read ``stats()`` from the server's
    thread: dictionary reads, safe from any thread (see the threads explanation).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidArgument(f"port must be an int from 0 to 65535, got {port!r}")
    if not isinstance(addr, str) or not addr:
        raise InvalidArgument(f"addr must be a host address, got {addr!r}")
    registry = CollectorRegistry()
    collector = FleetCollector(manager, registry=registry, namespace=namespace, labels=labels)
    try:
        server, thread = _start_http_server(port, addr, registry)
    except BaseException:
        collector.close()
        raise
    bound = int(server.server_address[1])
    return MetricsServer(collector, registry, server, thread, addr, bound)
