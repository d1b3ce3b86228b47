"""uvicorn's HTTP protocol with a deadline for a request's headers, and a way to read a
big body straight into the route's buffers.

**The deadline** (Trust issue, point 8). uvicorn closes a kept-alive connection that
stays idle (``timeout_keep_alive``), but it cancels that timer at the first byte of a
request and has no limit on how long the headers may then take: 50 clients that send
half a request line hold 50 connections (and their buffers) for ever. This subclass
arms a timer when a connection opens and when a request begins, cancels it when the
headers are complete, and closes the connection when it fires. The body's pace is the route's business (uploads time out
themselves; JSON bodies are bounded by api/body_limit.py).

**Taking the body** (issue 15). uvicorn hands a body to the app in pieces of about
64 KiB: each one copied into the request's buffer, copied again into a ``bytes``, with
reading paused and resumed around it; py-spy showed the event loop ~90 % busy during a
1 GiB upload, most of it there. A route that streams a big body (the upload PUT) can
instead call :func:`take_body`: the connection's protocol is swapped for a
:class:`BodyReader` (an :class:`asyncio.BufferedProtocol`) that has the kernel write
the rest of the body into the route's own buffer, 4 MiB at a time. The parser never
sees those bytes, so the connection closes after the response (``Connection: close``).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

#: the scope's ``extensions`` key under which a request offers :func:`take_body`
TAKE_BODY = "imgstore.take_body"


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` whose request headers must arrive within :attr:`header_timeout`."""

    header_timeout: float = 8.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    # uvicorn's own signature, narrower than asyncio.BaseProtocol's (BaseTransport)
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
        self._body_seen = 0
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:
            extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
            extensions[TAKE_BODY] = lambda: self._take_body(cycle)

    def on_body(self, body: bytes) -> None:
        self._body_seen += len(body)
        super().on_body(body)

    def _take_body(self, cycle: RequestResponseCycle) -> BodyReader | None:
        """The rest of ``cycle``'s body as a :class:`BodyReader`; None when it cannot be
        taken (no Content-Length, chunked, not the request the connection is on, or
        read by ``receive`` already), and the caller reads it the usual way."""
        length = _content_length(list(cycle.scope["headers"]))
        if length is None or self.cycle is not cycle or cycle.response_complete or cycle.disconnected:
            return None
        if self._body_seen != len(cycle.body):
            return None  # some of it went to the app through receive(): its place is unknown here
        if cycle.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False
        already, cycle.body = bytes(cycle.body), bytearray()
        remaining = length - len(already) if cycle.more_body else 0
        cycle.more_body = False  # receive() now answers an empty, last piece
        cycle.keep_alive = False  # the parser is behind the stream: no next request on it
        reader = BodyReader(self, already, remaining)
        if remaining:
            self.flow.pause_reading()
            self.transport.set_protocol(reader)
        return reader

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


class BodyReader(asyncio.BufferedProtocol):
    """The rest of one request's body, received into the caller's buffers.

    Stands in for the connection's :class:`HeaderDeadlineProtocol` until the connection
    ends: it forwards the write flow control and the connection's end to it, so the
    response is sent and the request learns of a disconnect as before.
    """

    def __init__(self, owner: HeaderDeadlineProtocol, already: bytes, remaining: int) -> None:
        self._owner = owner
        self._pending = bytearray(already)  # received, not yet read: the head, or bytes between reads
        self.remaining = remaining  # bytes of the body the kernel has not handed over yet
        self._target: memoryview | None = None
        self._filled = 0
        self._waiter: asyncio.Future[None] | None = None
        self._ended: str | None = None  # why no more bytes will come
        self._scratch = bytearray(1 << 16)  # where bytes land while no read waits

    # ------------------------------------------------------------ the caller's side

    async def readinto(self, buffer: memoryview | bytearray, timeout: float | None = None) -> int:
        """Fill ``buffer`` with the next bytes of the body, as many as fit or as are left;
        0 at its end. When the connection ends before the body does, or ``timeout``
        seconds pass without a byte, it answers what arrived until then, and raises
        :class:`BodyCut` when nothing did."""
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._pending))
        if n:
            view[:n] = self._pending[:n]
            del self._pending[:n]
        if n == len(view) or not self.remaining:
            return n
        self._target, self._filled = view[n:n + min(len(view) - n, self.remaining)], 0
        try:
            while self._filled < len(self._target) and self._ended is None:
                self._waiter = asyncio.get_running_loop().create_future()
                self._owner.flow.resume_reading()
                try:
                    await asyncio.wait_for(asyncio.shield(self._waiter), timeout)
                except TimeoutError:
                    self._ended = f"no byte of the body arrived for {timeout} seconds"
            if self._ended is not None and not n + self._filled:
                raise BodyCut(self._ended)
            return n + self._filled  # what arrived before a cut is kept: the next read raises
        finally:
            self._target, self._waiter = None, None
            if self._ended is None:
                self._owner.flow.pause_reading()

    # ------------------------------------------------------------ the transport's side

    def get_buffer(self, sizehint: int) -> memoryview | bytearray:
        if self._target is None or self._filled >= len(self._target):
            return self._scratch
        return self._target[self._filled:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._target is None or self._filled >= len(self._target):
            # no read waits (reading is paused then, but a read may be under way): body
            # bytes are kept for the next read; bytes past the body are dropped, the
            # connection closes after the response
            keep = min(nbytes, self.remaining)
            self._pending += self._scratch[:keep]
            self.remaining -= keep
            return
        self._filled += nbytes
        self.remaining -= nbytes
        if self._filled >= len(self._target):
            self._owner.flow.pause_reading()
            self._wake()

    def eof_received(self) -> bool | None:
        if self.remaining:
            self._end("the client closed its side before the end of the body")
        self._owner.eof_received()
        return None  # as uvicorn's protocol: the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self._end("the connection closed before the end of the body")
        self._owner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._owner.pause_writing()

    def resume_writing(self) -> None:
        self._owner.resume_writing()

    def _end(self, why: str) -> None:
        if self._ended is None:
            self._ended = why
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class BodyCut(Exception):
    """The body stopped before its Content-Length: the client went away or fell silent."""


def take_body(scope: MutableMapping[str, Any]) -> BodyReader | None:
    """The request's body as a :class:`BodyReader`, when the server offers it and the
    request has a Content-Length; None otherwise (read it through ``receive``). Call it
    before reading any of the body."""
    take: Callable[[], BodyReader | None] | None = scope.get("extensions", {}).get(TAKE_BODY)
    return take() if take is not None else None


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    length = None
    for name, value in headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            if length is not None or not value.isdigit() or len(value) > 18:
                return None
            length = int(value)
    return length


def with_header_timeout(seconds: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class to give ``uvicorn.run(http=...)``, with this deadline."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": seconds})
