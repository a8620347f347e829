"""Prometheus metrics, as an extension: ``GET /metrics`` in the text format, for admins
or the holder of the metrics token.

Event metrics (changes made durable, saves, executions, joins) are fed by the hooks;
the rest (rooms, connections, traffic by message kind, kernels, compactions) is read
from the daemon when scraped, so nothing is counted twice and the relay pays only for
a few integer increments. Every metric carries the ``node`` label (one per daemon).

    sync = NotebookSync(root, extensions=[Metrics(token="...")])
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.metadata
import logging
import socket
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .auth import Action, request_token
from .extensions import (
    ChangesDurable,
    DaemonStarted,
    DaemonStopping,
    ExecutionFinished,
    Extension,
    FileFailed,
    FileMerged,
    FileSaved,
    PeerJoined,
    PeerLeft,
)
from .origins import PeerOrigin, RemoteOrigin
from .stats import KINDS

if TYPE_CHECKING:
    from .api import Api
    from .daemon import Daemon

logger = logging.getLogger("crdtnb.metrics")

LAG_INTERVAL = 0.5  # seconds between two event-loop lag samples
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)


def _version() -> str:
    try:
        return importlib.metadata.version("crdtnb")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _origin_label(origin: object) -> str:
    if isinstance(origin, PeerOrigin):
        return "peer"
    if isinstance(origin, RemoteOrigin):
        return "remote"
    return "server"


_ORIGIN_LABELS = ("peer", "remote", "server")


class _ChangeSeries:
    """The labelled series on_changes_durable updates, for one node name."""

    def __init__(self, metrics: Metrics, node: str) -> None:
        self.batch_size = metrics.batch_size.labels(node)
        self.append_latency = metrics.append_latency.labels(node)
        self.changes = {origin: metrics.changes.labels(node, origin) for origin in _ORIGIN_LABELS}
        self.change_bytes = {origin: metrics.change_bytes.labels(node, origin) for origin in _ORIGIN_LABELS}


class Metrics(Extension):
    def __init__(self, token: str | None = None, node: str | None = None) -> None:
        self.token = token.encode() if token else None
        self._node_given = node
        self.node = node or socket.gethostname()
        self.registry = CollectorRegistry()
        labels = ["node"]
        self.append_latency = Histogram(
            "crdtnb_store_append_latency_seconds",
            "Time from a change's receipt to its being durable in the store",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "crdtnb_store_batch_changes", "Changes stored together in one batch", labels, buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.changes = Counter(
            "crdtnb_changes", "Changes made durable, by origin", [*labels, "origin"], registry=self.registry
        )
        self.change_bytes = Counter(
            "crdtnb_change_bytes", "Bytes of changes made durable, by origin", [*labels, "origin"], registry=self.registry
        )
        self.saves = Counter("crdtnb_file_saves", "Saves of .ipynb files (wrote: whether bytes changed)",
                             [*labels, "wrote"], registry=self.registry)
        self.merges = Counter("crdtnb_file_merges", "Outside edits of .ipynb files merged into rooms", labels,
                              registry=self.registry)
        self.file_errors = Counter("crdtnb_file_errors", "Files that could not be read or written", labels,
                                   registry=self.registry)
        self.executions = Counter("crdtnb_executions", "Cell executions, by how they ended", [*labels, "status"],
                                  registry=self.registry)
        self.execution_seconds = Histogram(
            "crdtnb_execution_duration_seconds", "How long cells ran", labels, buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.joins = Counter("crdtnb_peers_joined", "Websocket connections that joined a room, by role",
                             [*labels, "role"], registry=self.registry)
        self.loop_lag = Histogram(
            "crdtnb_event_loop_lag_seconds", f"How late the event loop woke from a {LAG_INTERVAL} s sleep", labels,
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self._children: dict[str, _ChangeSeries] = {}  # by node name
        self._roles: dict[int, str] = {}  # id(peer) -> "writer" | "reader", of open connections
        self._daemon: Daemon | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self.registry.register(_Scraped(self))

    # -- hooks ------------------------------------------------------------------------

    def routes(self, api: Api) -> Sequence[BaseRoute]:
        async def metrics(request: Request) -> Response:
            if not self._token_matches(request):
                try:
                    await api.check(request, "", Action.ADMIN)
                except Exception as exc:
                    from .api import status_of

                    status, message = status_of(exc)
                    return JSONResponse({"error": message}, status_code=status)
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        return [Route("/metrics", metrics, methods=["GET"])]

    def _token_matches(self, request: Request) -> bool:
        given = request_token(request)
        return self.token is not None and given is not None and hmac.compare_digest(given.encode(), self.token)

    async def on_daemon_started(self, event: DaemonStarted) -> None:
        self._daemon = event.daemon
        if self._node_given is None:
            self.node = event.daemon.ownership.node  # the cluster's name for this daemon
        self._lag_task = asyncio.create_task(self._watch_loop_lag(), name="metrics:loop-lag")

    async def on_daemon_stopping(self, event: DaemonStopping) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            await asyncio.gather(self._lag_task, return_exceptions=True)

    def on_changes_durable(self, event: ChangesDurable) -> None:
        # Once per stored batch, on the relay's path: the labelled series are looked up
        # once (prometheus_client's labels() takes a lock and builds a key each call).
        children = self._children.get(self.node)
        if children is None:
            children = self._children[self.node] = _ChangeSeries(self, self.node)
        changes = event.changes
        children.batch_size.observe(len(changes))
        observe = children.append_latency.observe
        if len(changes) == 1:
            change = changes[0]
            if not isinstance(change.origin, RemoteOrigin):
                observe(change.latency)
            origin = _origin_label(change.origin)
            children.changes[origin].inc()
            children.change_bytes[origin].inc(change.nbytes)
            return
        counts: dict[str, list[int]] = {}
        for change in changes:
            if not isinstance(change.origin, RemoteOrigin):
                observe(change.latency)
            tally = counts.setdefault(_origin_label(change.origin), [0, 0])
            tally[0] += 1
            tally[1] += change.nbytes
        for origin, (number, nbytes) in counts.items():
            children.changes[origin].inc(number)
            children.change_bytes[origin].inc(nbytes)

    def on_peer_joined(self, event: PeerJoined) -> None:
        role = "writer" if event.can_write else "reader"
        self._roles[id(event.peer)] = role
        self.joins.labels(self.node, role).inc()

    def on_peer_left(self, event: PeerLeft) -> None:
        self._roles.pop(id(event.peer), None)

    def on_file_saved(self, event: FileSaved) -> None:
        self.saves.labels(self.node, str(event.wrote).lower()).inc()

    def on_file_merged(self, event: FileMerged) -> None:
        self.merges.labels(self.node).inc()

    def on_file_failed(self, event: FileFailed) -> None:
        self.file_errors.labels(self.node).inc()

    def on_execution_finished(self, event: ExecutionFinished) -> None:
        self.executions.labels(self.node, event.status).inc()
        self.execution_seconds.labels(self.node).observe(event.duration)

    async def _watch_loop_lag(self) -> None:
        observe = self.loop_lag.labels(self.node).observe
        while True:
            started = time.monotonic()
            await asyncio.sleep(LAG_INTERVAL)
            observe(max(0.0, time.monotonic() - started - LAG_INTERVAL))


class _Scraped(Collector):
    """What is read from the daemon at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        metrics, daemon = self.metrics, self.metrics._daemon
        node = metrics.node
        info = GaugeMetricFamily("crdtnb_info", "This daemon", labels=["node", "version"])
        info.add_metric([node, _version()], 1)
        yield info
        if daemon is None:
            return
        rooms = GaugeMetricFamily("crdtnb_rooms_open", "Rooms (open notebooks) loaded", labels=["node"])
        rooms.add_metric([node], len(daemon.rooms.rooms))
        yield rooms
        owned = GaugeMetricFamily("crdtnb_rooms_owned", "Open rooms this daemon owns (runs kernels, saves)", labels=["node"])
        owned.add_metric([node], sum(1 for name in daemon.rooms.rooms if daemon.ownership.owns(name)))
        yield owned
        connections = GaugeMetricFamily("crdtnb_connections", "Open websocket connections, by role", labels=["node", "role"])
        roles = list(metrics._roles.values())
        for role in ("writer", "reader"):
            connections.add_metric([node, role], roles.count(role))
        yield connections
        stats = daemon.stats
        for direction, messages, nbytes in (
            ("in", stats.messages_in, stats.bytes_in),
            ("out", stats.messages_out, stats.bytes_out),
        ):
            count = CounterMetricFamily(
                f"crdtnb_messages_{direction}", f"Websocket messages {direction}, by kind", labels=["node", "kind"]
            )
            size = CounterMetricFamily(
                f"crdtnb_message_bytes_{direction}", f"Bytes of websocket messages {direction}, by kind", labels=["node", "kind"]
            )
            for index, kind in enumerate(KINDS):
                count.add_metric([node, kind], messages[index])
                size.add_metric([node, kind], nbytes[index])
            yield count
            yield size
        overflows = CounterMetricFamily(
            "crdtnb_send_queue_overflows", "Clients disconnected (1013) for falling too far behind", labels=["node"]
        )
        overflows.add_metric([node], stats.queue_overflows)
        yield overflows
        closes = CounterMetricFamily("crdtnb_websocket_closes", "Connections the server closed, by code", labels=["node", "code"])
        for code, number in sorted(stats.closed_by_code.items()):
            closes.add_metric([node, str(code)], number)
        yield closes
        yield from _extension_metrics(daemon, node)


def _extension_metrics(daemon: Daemon, node: str) -> Iterator[Any]:
    from .compaction import Compaction
    from .kernel import Kernels, KernelStatus

    compaction = daemon.extension(Compaction)
    if compaction is not None:
        done = CounterMetricFamily("crdtnb_compactions", "Room logs compacted into a snapshot", labels=["node"])
        done.add_metric([node], compaction.compactions)
        yield done
    kernels = daemon.extension(Kernels)
    if kernels is not None:
        gauge = GaugeMetricFamily("crdtnb_kernels", "Kernels, by status", labels=["node", "status"])
        statuses = [agent.status.value for agent in kernels.agents.values()]
        ended = list(kernels.ended.values())
        for status in KernelStatus:
            if status is KernelStatus.NONE:
                continue
            number = statuses.count(status.value) + sum(1 for e in ended if e is status)
            gauge.add_metric([node, status.value], number)
        yield gauge
