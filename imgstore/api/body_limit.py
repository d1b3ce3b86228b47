"""Request bodies are bounded before anything reads them (Trust issue, point 3).

Every API takes a small JSON body, except the upload URL, which streams an image.
Starlette reads a JSON body whole into memory before the route (and its session check)
runs, so without a bound one unauthenticated request of 300 MiB costs the server more
than 300 MiB. This pure ASGI middleware answers 413 (SYS.1007) and closes the
connection as soon as it knows a body is too big: at once when ``Content-Length`` says
so, or when the bytes of a chunked body pass the limit, and never passes more on.
"""
from __future__ import annotations

import json
import re
from typing import Any

from imgstore.errors import INVALID_ARGUMENT, ApiError, ErrorKind
from imgstore.wire.numbers import parse_count

TOO_LARGE = ErrorKind(INVALID_ARGUMENT.code, INVALID_ARGUMENT.description, 413)
#: the routes that stream their body (api/routes/images.py's upload URL), under any API prefix
STREAMED = re.compile(r"^(?:/zstack)?/v1/images/uploads/[^/]+/?$")


class BodyLimit:
    """Pure ASGI middleware: see the module's doc."""

    def __init__(self, app: Any, max_bytes: int, streamed: re.Pattern[str] = STREAMED) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.streamed = streamed

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.streamed.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope["headers"])
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, f"the body declares {declared} bytes")
            return
        await _Bounded(self, receive, send).run(scope)

    async def _refuse(self, send: Any, why: str) -> None:
        err = ApiError(TOO_LARGE, f"{why}; an API body may hold at most {self.max_bytes} bytes "
                                  "(setting max_body_bytes); only an upload URL takes more")
        body = json.dumps(err.body()).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),  # uvicorn then closes instead of reading the rest
        ]})
        await send({"type": "http.response.body", "body": body})


class _Bounded:
    """One request whose body is counted as it arrives."""

    def __init__(self, limit: BodyLimit, receive: Any, send: Any) -> None:
        self.limit = limit
        self._receive = receive
        self._send = send
        self.received = 0
        self.started = False
        self.refused = False

    async def run(self, scope: Any) -> None:
        await self.limit.app(scope, self.receive, self.send)

    async def receive(self) -> Any:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit.max_bytes and not self.started:
                self.refused = True
                await self.limit._refuse(self._send, f"the body passed {self.limit.max_bytes} bytes")
                return {"type": "http.disconnect"}  # the app stops reading (ClientDisconnect)
        return message

    async def send(self, message: Any) -> None:
        if self.refused:
            return  # the 413 was the answer
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """``Content-Length`` as a number; absent (or unreadable: uvicorn refuses those) is None."""
    for name, value in headers:
        if name == b"content-length":
            return parse_count(value.decode("latin-1"))
    return None
