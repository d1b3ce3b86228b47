"""uvicorn's HTTP protocol with a deadline for a request's headers (Trust issue, point 8).

uvicorn closes a kept-alive connection that stays idle (``timeout_keep_alive``), but it
cancels that timer at the first byte of a request and has no limit on how long the
headers may then take: 50 clients that send half a request line hold 50 connections
(and their buffers) for ever. This subclass arms a timer when a connection opens and
when a request begins, cancels it when the headers are complete, and closes the
connection when it fires. The body's pace is the route's business (uploads time out
themselves; JSON bodies are bounded by api/body_limit.py).
"""
from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` whose request headers must arrive within :attr:`header_timeout`."""

    header_timeout: float = 8.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def with_header_timeout(seconds: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class to give ``uvicorn.run(http=...)``, with this deadline."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": seconds})
