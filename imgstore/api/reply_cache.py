"""Replies of queries, kept until the database changes.

A query's reply depends only on the committed rows, the caller's session and the
request itself. So the reply of a route marked :func:`cacheable` is kept with the
database version read *before* its handler ran (db/changes.py), and a later identical
request is answered with the same bytes while a version read *after* that request
arrived is still the same: nothing was committed in between, on this node or on any
other sharing the database, so the handler would have read the same rows. Nothing is
ever served stale; a write anywhere simply empties the cache.

The session is part of the key (every reply is the caller's own): a reply is kept only
under the very Authorization header that authenticated it (api/deps.py refuses a
request with two), its expiry is checked on every hit, and a logout is a commit like
any other. Only complete 200
replies are kept; errors always go through the handler.

A page never asked before may still be answered without its handler: from a list of
``api/kept_pages.py``, under the same rules (the version, a proven session).

It sits innermost, so the request id, the access log and the metrics (labelled by the
route the cached reply came from) see a cached reply like any other.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from imgstore.api.kept_pages import KeptPages
from imgstore.wire.dates import utcnow

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])

#: replies bigger than this are not kept (a ``limit=1000`` of images, say)
MAX_REPLY_BYTES = 1 << 20
#: all kept replies together
MAX_TOTAL_BYTES = 64 << 20

_KEY_HEADERS = (b"authorization", b"host", b"x-json-schema")


def cacheable(endpoint: Endpoint) -> Endpoint:
    """Mark a GET route whose reply is a function of the database, the session and the
    request only: no clock, no process memory, no cluster."""
    # a mark on the function object itself, which the route keeps; a Callable type
    # cannot declare attributes
    endpoint.reply_cacheable = True  # type: ignore[attr-defined]
    return endpoint


@dataclass(frozen=True)
class _Reply:
    headers: list[tuple[bytes, bytes]]
    body: bytes
    route: Any  # the route that made it, for the metrics' label
    session_expires: datetime


class ReplyCache:
    """Pure ASGI middleware: see the module's doc."""

    def __init__(self, app: Any, max_entries: int, prefixes: tuple[str, ...], kept_list_rows: int = 0) -> None:
        self.app = app
        self.max_entries = max_entries
        self.prefixes = prefixes
        self._version: Hashable | None = None
        self._replies: dict[tuple[Any, ...], _Reply] = {}
        self._bytes = 0
        #: Authorization headers a handler proved under this version: when each one's session expires
        self._sessions: dict[bytes, datetime] = {}
        self.pages = KeptPages(kept_list_rows)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        key = self._key(scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        rt = scope["app"].state.runtime
        version = await rt.changes.version()
        if version is None:
            await self.app(scope, receive, send)
            return
        if version != self._version:
            self._forget_all(version)
        reply = self._replies.get(key)
        if reply is not None and reply.session_expires > utcnow():
            await self._send(scope, send, reply.route, list(reply.headers), reply.body)
            return
        expires = self._sessions.get(key[2])
        page = await self.pages.page(scope, version) if expires is not None and expires > utcnow() else None
        if page is not None:
            body, route = page
            await self._send(scope, send, route, [(b"content-length", b"%d" % len(body)),
                                                  (b"content-type", b"application/json")], body)
            return
        started = time.monotonic()
        cacheable, kept = await self._answer_and_keep(scope, receive, send, key, version)
        if cacheable:
            rt.metrics.count_reply(kept=False)
        if kept:
            await self.pages.missed(scope, rt, version, time.monotonic() - started)

    async def _send(self, scope: Any, send: Any, route: Any, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A kept reply, or a page of a kept list: 200, as its route would answer it."""
        scope["route"] = route
        scope["app"].state.runtime.metrics.count_reply(kept=True)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _key(self, scope: Any) -> tuple[Any, ...] | None:
        """The request's key, or ``None`` for a request that is never kept."""
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].startswith(self.prefixes):
            return None
        wanted = [b""] * len(_KEY_HEADERS)
        for name, value in scope["headers"]:
            if name in _KEY_HEADERS:
                wanted[_KEY_HEADERS.index(name)] = value
        if not wanted[0]:
            return None  # no session: the handler answers ID.1001
        if sum(name == b"authorization" for name, _ in scope["headers"]) > 1:
            return None  # two sessions: the handler refuses it (api/deps.py)
        return (scope["path"], scope["query_string"], *wanted)

    async def _answer_and_keep(self, scope: Any, receive: Any, send: Any, key: tuple[Any, ...],
                               version: Hashable) -> tuple[bool, bool]:
        """Let the handler answer; keep its reply if it may be. Whether the route is
        cacheable, and whether the reply was kept."""
        start: dict[str, Any] = {}
        chunks: list[bytes] = []
        complete = False

        async def watch(message: Any) -> None:
            nonlocal start, complete
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                complete = not message.get("more_body", False)
            await send(message)

        await self.app(scope, receive, watch)
        route = scope.get("route")
        if not getattr(getattr(route, "endpoint", None), "reply_cacheable", False):
            return False, False
        state = scope.get("state", {})
        session = state.get("session")
        proven = (state.get("session_header") or "").encode("latin-1") == key[2]  # the key's Authorization
        if not (complete and start.get("status") == 200 and session is not None and proven
                and version == self._version):
            return True, False
        self._keep(key, _Reply(list(start.get("headers", ())), b"".join(chunks), route, session.expired_date))
        self._sessions[key[2]] = session.expired_date
        return True, True

    def _keep(self, key: tuple[Any, ...], reply: _Reply) -> None:
        size = len(reply.body)
        if size > MAX_REPLY_BYTES:
            return
        old = self._replies.pop(key, None)
        if old is not None:
            self._bytes -= len(old.body)
        while self._replies and (len(self._replies) >= self.max_entries or self._bytes + size > MAX_TOTAL_BYTES):
            oldest = next(iter(self._replies))  # the first kept: dicts keep their order
            self._bytes -= len(self._replies.pop(oldest).body)
        self._replies[key] = reply
        self._bytes += size

    def _forget_all(self, version: Hashable) -> None:
        self._version = version
        self._replies = {}
        self._bytes = 0
        self._sessions = {}
        self.pages.forget_all(version)
