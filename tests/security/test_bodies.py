"""Point 3 of the Trust issue: bodies are bounded before they are read.

A JSON body over ``max_body_bytes`` (1 MiB by default) is answered 413 before it is
buffered, whether it declares its length or comes chunked, with a session or without;
the server's memory hardly moves. Only the upload URL streams big bodies (covered by
tests/integration/services/images/test_image_upload.py).
"""
from __future__ import annotations

import json

import pytest

from tests.conftest import Api, Server
from tests.security.rawhttp import connect, rss_kib, send_while_reading, status_of

BIG = 64 << 20
PIECE = b"x" * (1 << 20)
MAX_GROWTH_KIB = 8 << 10


def _head(port: int, path: str, extra: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"{extra}\r\n").encode()


def _declared(port: int, path: str, auth: str = "") -> tuple[bytes, int, float]:
    sock = connect(port)
    with sock:
        head = _head(port, path, f"{auth}Content-Length: {BIG}\r\n")
        return send_while_reading(sock, head, (PIECE for _ in range(BIG // len(PIECE))))


def _chunked(port: int, path: str, auth: str = "") -> tuple[bytes, int, float]:
    sock = connect(port)
    frame = f"{len(PIECE):x}\r\n".encode() + PIECE + b"\r\n"
    with sock:
        head = _head(port, path, f"{auth}Transfer-Encoding: chunked\r\n")
        pieces = [frame] * (BIG // len(PIECE)) + [b"0\r\n\r\n"]
        return send_while_reading(sock, head, pieces)


@pytest.mark.parametrize("send", [_declared, _chunked], ids=["content-length", "chunked"])
def test_a_big_unauthenticated_body_is_refused_unread(server: Server, send) -> None:  # type: ignore[no-untyped-def]
    pid = server.proc.pid
    before = rss_kib(pid)
    reply, sent, took = send(server.port, "/zstack/v1/backup-storage/ceph")
    grown = rss_kib(pid) - before
    assert status_of(reply) == 413, reply[:300]
    body = json.loads(reply.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "SYS.1007", body
    assert took < 10, f"the 413 came after {took:.1f} s"
    assert sent < BIG // 2, f"the server read {sent} bytes of a body it refuses"
    assert grown < MAX_GROWTH_KIB, f"the server grew by {grown} KiB"


def test_a_big_body_with_a_session_is_refused_too(server: Server) -> None:
    api = Api.login(server.url)
    auth = f"Authorization: {api.headers['Authorization']}\r\n"
    reply, _sent, _ = _declared(server.port, "/zstack/v1/backup-storage/ceph", auth)
    assert status_of(reply) == 413, reply[:300]
    reply, _sent, _ = _chunked(server.port, "/zstack/v1/images", auth)
    assert status_of(reply) == 413, reply[:300]


def test_a_body_under_the_limit_is_read_as_ever(server: Server) -> None:
    api = Api.login(server.url)
    filler = "a" * (512 << 10)
    r = api.post("/backup-storage/ceph", json={"params": {"name": "x", "monUrls": [], "description": filler}})
    assert r.status_code == 400, r.text  # the route's own validation, not the size
