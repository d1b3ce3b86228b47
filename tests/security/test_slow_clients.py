"""Point 8 of the Trust issue: slow and many clients are bounded.

* A connection that never finishes its headers (or never sends a byte) is closed
  within ``header_timeout`` (imgstore/http_protocol.py).
* Downloads of one export URL beyond ``export_max_per_link`` get 429 at once, and the
  slots come back when the downloads end (api/export_slots.py).
* Slow readers of an export cost a bounded amount of memory each (backpressure).
"""
from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import Api, DevCluster, Server
from tests.integration.services.images.test_image_export import adopt_pool, export, rbd_import
from tests.integration.services.images.test_images import MiB, forget_images, image_data
from tests.security.rawhttp import connect, read_reply, rss_kib, status_of

HEADER_TIMEOUT = 2


@pytest.fixture
def strict_server(fresh_server: Server) -> Server:
    fresh_server.env["IMGSTORE_HEADER_TIMEOUT"] = str(HEADER_TIMEOUT)
    return fresh_server.start()


def _closed_within(socks: list[socket.socket], limit: float) -> list[float]:
    """Seconds until each socket saw the server close it (``limit`` for those it did not)."""
    started = time.monotonic()
    closed: dict[int, float] = {}
    for s in socks:
        s.setblocking(False)
    while len(closed) < len(socks) and time.monotonic() - started < limit:
        for i, s in enumerate(socks):
            if i in closed:
                continue
            try:
                if s.recv(4096) == b"":
                    closed[i] = time.monotonic() - started
            except BlockingIOError:
                pass
            except OSError:
                closed[i] = time.monotonic() - started
        time.sleep(0.05)
    return [closed.get(i, limit) for i in range(len(socks))]


def test_fifty_half_sent_requests_are_closed_within_the_header_timeout(strict_server: Server) -> None:
    socks = [connect(strict_server.port) for _ in range(50)]
    try:
        for s in socks:
            s.sendall(f"GET /zstack/v1/zones HTTP/1.1\r\nHost: 127.0.0.1:{strict_server.port}\r\nX-Slow: ".encode())
        times = _closed_within(socks, HEADER_TIMEOUT + 8)
    finally:
        for s in socks:
            s.close()
    assert max(times) <= HEADER_TIMEOUT + 2, f"closed after {sorted(times)[-5:]} s"


def test_a_trickled_header_and_a_silent_connection_are_closed(strict_server: Server) -> None:
    silent = connect(strict_server.port)
    trickled = connect(strict_server.port)
    started = time.monotonic()
    try:
        line = f"GET /zstack/v1/zones HTTP/1.1\r\nHost: 127.0.0.1:{strict_server.port}\r\n".encode()
        closed_at = None
        for byte in line * 10:  # one byte every 0.2 s: a slowloris
            try:
                trickled.sendall(bytes([byte]))
            except OSError:
                closed_at = time.monotonic() - started
                break
            time.sleep(0.2)
            if time.monotonic() - started > HEADER_TIMEOUT + 4:
                break
        times = _closed_within([silent, trickled], HEADER_TIMEOUT + 4)
    finally:
        silent.close()
        trickled.close()
    assert times[0] <= HEADER_TIMEOUT + 2, times
    assert (closed_at or times[1]) <= HEADER_TIMEOUT + 2, (closed_at, times)


def test_a_kept_alive_connection_still_serves_requests(strict_server: Server) -> None:
    with connect(strict_server.port) as sock:
        for _ in range(2):
            sock.sendall(f"GET /zstack/v1/accounts/sessions/x/valid HTTP/1.1\r\n"
                         f"Host: 127.0.0.1:{strict_server.port}\r\n\r\n".encode())
            assert status_of(read_reply(sock)) < 500
            time.sleep(HEADER_TIMEOUT / 2)  # idle between requests is the keep-alive's business


# ---------------------------------------------------------------- exports


@pytest.fixture
def export_url(api: Api, c1: DevCluster, pool: str, tmp_path: Path) -> Iterator[str]:
    """The export URL of a 48 MiB image of data (no holes: every byte is read)."""
    path = tmp_path / "disk.raw"
    path.write_bytes(image_data(48 * MiB))
    image_uuid = uuid.uuid4().hex
    rbd_import(c1, path, pool, image_uuid)
    bs = adopt_pool(api, c1, pool, image_uuid)
    r = export(api, bs, image_uuid)
    assert r.status_code == 200, r.text
    yield r.json()["imageUrl"]
    forget_images(api)


def slow_reader(url: str) -> socket.socket:
    """A GET of ``url`` whose reader takes nothing yet (a tiny receive window)."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.settimeout(10)
    sock.connect((parts.hostname, parts.port))
    sock.sendall(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
    return sock


def _status(sock: socket.socket) -> int:
    head = b""
    while b"\r\n" not in head:
        data = sock.recv(1)
        if not data:
            raise AssertionError(f"closed before a status line: {head!r}")
        head += data
    return int(head.split(b" ", 2)[1])


@pytest.mark.ceph
def test_downloads_of_one_link_beyond_the_cap_get_429(server: Server, export_url: str) -> None:
    readers = [slow_reader(export_url) for _ in range(4)]
    try:
        assert [_status(s) for s in readers] == [200] * 4
        extra = slow_reader(export_url)
        reply = read_reply(extra, 10)
        extra.close()
        assert status_of(reply) == 429, reply[:300]
        assert b"export_max_per_link" in reply
    finally:
        for s in readers:
            s.close()
    deadline = time.monotonic() + 10
    while True:  # the slots come back once the server sees the readers gone
        again = slow_reader(export_url)
        status = _status(again)
        again.close()
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status == 200


@pytest.mark.ceph
def test_slow_readers_of_an_export_cost_little_memory(server: Server, export_url: str) -> None:
    pid = server.proc.pid
    before = rss_kib(pid)
    readers = [slow_reader(export_url) for _ in range(24)]
    try:
        time.sleep(5)  # the server reads ahead as far as it will
        grown = rss_kib(pid) - before
    finally:
        for s in readers:
            s.close()
    assert grown < 64 << 10, f"24 slow readers of one export grew the server by {grown >> 10} MiB"
