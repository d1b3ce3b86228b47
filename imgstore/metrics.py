"""Prometheus metrics: ``GET /metrics``, the API middleware, the image byte counter.

Each app has its own :class:`Metrics` (its own ``CollectorRegistry``, never the global
one), so several apps in one process do not share counters. The app binds it to the
runtime as ``rt.metrics``; services count the image bytes they move with
:func:`imgstore.services.node.metrics.count_image_bytes`.

Storage and mon figures are not kept in the process: a scrape reads them from the
database (:mod:`imgstore.services.node.metrics`), so every node of a cluster reports the same
truth and a storage deleted on another node disappears at once.

``/metrics`` needs no session, as Prometheus scrapes without one; it tells names,
uuids, capacities and statuses, never a credential.
"""
from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from imgstore.api.deps import runtime
from imgstore.logs import StatusWatch
from imgstore.services.node import metrics as figures_service
from imgstore.services.node.runtime import Runtime

DIRECTIONS = ("upload", "download", "export")
STATUSES = ("Connecting", "Connected", "Disconnected")
STATES = ("Enabled", "Disabled")
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# API calls take milliseconds; adds over SSH take seconds; streamed images take minutes
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


class Metrics:
    """The metrics a node keeps in memory, in a registry of its own."""

    def __init__(self) -> None:
        # no ``*_created`` series: they double the output and no dashboard reads them
        # (a process-wide switch of prometheus_client, the same for every app)
        disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated in prometheus_client
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "imgstore_http_requests", "API requests answered, by route template and HTTP status",
            ("method", "route", "code"), registry=self.registry,
        )
        self.latency = Histogram(
            "imgstore_http_request_duration_seconds",
            "Time from request to the last byte of the response, by route template",
            ("method", "route"), buckets=_BUCKETS, registry=self.registry,
        )
        image_bytes = Counter(
            "imgstore_image_bytes", "Image bytes moved: uploaded to, downloaded into or exported from storage",
            ("direction",), registry=self.registry,
        )
        self._image_bytes = {d: image_bytes.labels(direction=d) for d in DIRECTIONS}
        replies = Counter(
            "imgstore_reply_cache_requests",
            "Query requests answered from a kept reply (hit) or by their handler (miss); see api/reply_cache.py",
            ("result",), registry=self.registry,
        )
        self._replies = {True: replies.labels(result="hit"), False: replies.labels(result="miss")}

    def count_image_bytes(self, direction: str, n: int) -> None:
        """Add ``n`` bytes moved in ``direction`` (``upload``, ``download`` or ``export``)."""
        self._image_bytes[direction].inc(n)

    def count_reply(self, kept: bool) -> None:
        """One query answered from a kept reply (``kept``) or by its handler."""
        self._replies[kept].inc()

    def observe_request(self, method: str, route: str, code: int, seconds: float) -> None:
        method = method if method in _METHODS else "other"  # a client's made-up verbs are not labels
        self.requests.labels(method, route, str(code)).inc()
        self.latency.labels(method, route).observe(seconds)

    def exposition(self, figures: figures_service.Figures, ping_round_seconds: float | None) -> bytes:
        """The text format of this registry followed by the scrape-time figures."""
        return generate_latest(self.registry) + figures_text(figures, ping_round_seconds).encode()


# ------------------------------------------------------------------ scrape-time figures
#
# Written as text directly, not through prometheus_client's metric families: with 10 000
# storages that is 120 000 lines, which the generic path takes a second to format and
# this one a tenth of that.

_BS = "imgstore_backup_storage"
_FAMILIES = (
    (f"{_BS}_total_bytes", "Total capacity of the backup storage"),
    (f"{_BS}_available_bytes", "Available capacity of the backup storage"),
    (f"{_BS}_pool_available_bytes", "Bytes still writable in the Ceph pool of the backup storage"),
    (f"{_BS}_pool_used_bytes", "Bytes used in the Ceph pool of the backup storage"),
    (f"{_BS}_status", "1 for the current status of the backup storage, 0 for the others"),
    (f"{_BS}_state", "1 for the current state of the backup storage, 0 for the other"),
    ("imgstore_ceph_mon_status", "1 for the current status of the mon, 0 for the others"),
)


def figures_text(figures: figures_service.Figures, ping_round_seconds: float | None = None) -> str:
    """Storage and mon gauges in Prometheus text format, one family after the other."""
    lines: list[list[str]] = [[] for _ in _FAMILIES]
    total, available, pool_available, pool_used, status, state, mon = lines
    for s in figures.storages:
        ids = f'uuid="{_escape(s.uuid)}",name="{_escape(s.name)}"'
        typed = f'{{{ids},type="{_escape(s.type)}"}} '
        total.append(f"{_BS}_total_bytes{typed}{int(s.total_bytes or 0)}")
        available.append(f"{_BS}_available_bytes{typed}{int(s.available_bytes or 0)}")
        if s.pool_available_bytes is not None:
            pool_available.append(f"{_BS}_pool_available_bytes{typed}{int(s.pool_available_bytes)}")
        if s.pool_used_bytes is not None:
            pool_used.append(f"{_BS}_pool_used_bytes{typed}{int(s.pool_used_bytes)}")
        for v in _one_hot(STATUSES, s.status):
            status.append(f'{_BS}_status{{{ids},status="{_escape(v)}"}} {int(v == s.status)}')
        for v in _one_hot(STATES, s.state):
            state.append(f'{_BS}_state{{{ids},state="{_escape(v)}"}} {int(v == s.state)}')
    for m in figures.mons:
        ids = f'backup_storage_uuid="{_escape(m.backup_storage_uuid)}",hostname="{_escape(m.hostname)}"'
        for v in _one_hot(STATUSES, m.status):
            mon.append(f'imgstore_ceph_mon_status{{{ids},status="{_escape(v)}"}} {int(v == m.status)}')
    out: list[str] = []
    for (name, help_text), samples in zip(_FAMILIES, lines, strict=True):
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *samples]
    if ping_round_seconds is not None:
        name = "imgstore_ping_round_seconds"
        out += [f"# HELP {name} How long the last ping round of this node's tracker took",
                f"# TYPE {name} gauge", f"{name} {ping_round_seconds!r}"]
    return "\n".join(out) + "\n"


def _escape(value: str | None) -> str:
    if value is None:
        return ""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _one_hot(values: tuple[str, ...], current: str) -> tuple[str, ...]:
    """Every known value, and the current one if it is not known: it still shows as 1."""
    return values if current in values else (*values, current)


# ------------------------------------------------------------------ the route

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics (no session needed)", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {}}, "description": "Prometheus text format"}})
async def scrape(request: Request, rt: Runtime = Depends(runtime)) -> Response:
    """Prometheus text format. No session: Prometheus scrapes without one, and nothing
    here is a secret (names, uuids, capacities, statuses, request counts)."""
    figures = await figures_service.figures(rt)
    gzipped = "gzip" in request.headers.get("accept-encoding", "")  # Prometheus asks for it
    # formatting thousands of storages is CPU work: off the event loop serving the API
    body = await asyncio.to_thread(_body, rt.metrics, figures, getattr(rt.node.tracker, "last_round_seconds", None),
                                   gzipped)
    headers = {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"} if gzipped else {"Vary": "Accept-Encoding"}
    return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4, headers=headers)


def _body(metrics: Metrics, figures: figures_service.Figures, ping_round_seconds: float | None,
          gzipped: bool) -> bytes:
    body = metrics.exposition(figures, ping_round_seconds)
    return gzip.compress(body, compresslevel=1) if gzipped else body


# ------------------------------------------------------------------ the middleware


class MetricsMiddleware:
    """Pure ASGI middleware counting requests and timing them to their last byte.

    It only watches ``http.response.start`` go by: bodies, streamed uploads and exports
    included, pass through untouched. Requests are labelled by the route *template* the
    router picked (``/zstack/v1/backup-storage/{uuid}``), never the raw path, so the
    number of series stays bounded; a path no route knows is ``unmatched``.

    It must sit inside any middleware that copies the scope (``JsonBodyByDefault``):
    the router records its pick in the scope dict it is given, and this middleware
    reads it from the same dict.
    """

    def __init__(self, app: Any, metrics: Metrics, prefixes: Iterable[str] = ()) -> None:
        self.app = app
        self.metrics = metrics
        # FastAPI keeps included routers nested: a route knows its own path, not the
        # prefix it was included under; the longest known prefix is tried first
        self.prefixes = (*sorted(set(prefixes), key=len, reverse=True), "")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        watch = StatusWatch(send)
        try:
            await self.app(scope, receive, watch)
        finally:
            self.metrics.observe_request(scope["method"], self.route_template(scope), watch.status,
                                         time.perf_counter() - started)

    def route_template(self, scope: Any) -> str:
        route = scope.get("route")
        path_format = getattr(route, "path_format", None)
        regex = getattr(route, "path_regex", None)
        if not path_format or regex is None:
            return UNMATCHED
        path = scope["path"]
        for prefix in self.prefixes:
            if path.startswith(prefix) and regex.match(path[len(prefix):]):
                return f"{prefix}{path_format}"
        return str(path_format)
