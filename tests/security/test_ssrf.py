"""Point 5 of the Trust issue: AddImage cannot be pointed at the server's own network.

A real ``imgstore serve`` and loopback HTTP servers holding a "secret": an http(s) source
that resolves to a loopback, link-local (metadata service), private, unspecified or
multicast address is refused (SYS.1007) before any connection, in every spelling of
the address; with an allowance for one address, a redirect to another is refused at
its hop; a closed port and a port that does not speak HTTP fail with the same words.
"""
from __future__ import annotations

import http.server
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.conftest import Api, DevCluster, Server, free_port
from tests.integration.services.images.test_images import add_image, add_storage, added, failed, images

pytestmark = pytest.mark.ceph

SECRET = b"the secret of an internal service\n" * 30000  # about 1 MiB: a raw image if read


@dataclass
class Web:
    """A loopback HTTP server: ``/secret`` serves SECRET, ``/go`` redirects to ``target``."""

    host: str
    target: str = ""
    hits: list[str] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


@pytest.fixture
def web() -> Iterator[callable]:
    started: list[http.server.ThreadingHTTPServer] = []

    def start(host: str) -> Web:
        state = Web(host)

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, body: bool) -> None:
                state.hits.append(f"{self.command} {self.path}")
                if self.path == "/go":
                    self.send_response(302)
                    self.send_header("Location", state.target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(SECRET)))
                self.end_headers()
                if body:
                    self.wfile.write(SECRET)

            def do_HEAD(self) -> None:
                self._answer(False)

            def do_GET(self) -> None:
                self._answer(True)

        httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        state.port = httpd.server_address[1]
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        return state

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def not_http() -> Iterator[int]:
    """A port that accepts and answers with something that is not HTTP (an SSH banner)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    listener.close()


def start(server: Server, allow: str) -> Api:
    server.env["IMGSTORE_IMAGE_URL_ALLOW"] = allow
    return server.start().login()


def test_sources_on_the_servers_own_network_are_refused(fresh_server: Server, c1: DevCluster, pool: str,
                                                        web) -> None:  # type: ignore[no-untyped-def]
    api = start(fresh_server, "")  # no allowance: the default
    storage = add_storage(api, c1, pool)
    inside = web("127.0.0.1")
    port = inside.port
    for url in (inside.url("/secret"), f"http://localhost:{port}/secret", f"http://[::1]:{port}/secret",
                f"http://0.0.0.0:{port}/secret", "http://169.254.169.254/latest/meta-data/iam",
                f"http://2130706433:{port}/secret", f"http://0x7f.1:{port}/secret",
                f"http://[::ffff:127.0.0.1]:{port}/secret", f"http://127.1:{port}/secret",
                "http://10.1.2.3/disk.raw", "http://192.168.0.1/disk.raw", "http://[fd00::1]/disk.raw",
                "http://224.0.0.1/disk.raw", f"https://127.0.0.1:{port}/secret"):
        error = failed(api, add_image(api, url, [storage], name="ssrf"), timeout=30)
        assert error["code"] == "SYS.1007", (url, error)
        assert "IMGSTORE_IMAGE_URL_ALLOW" in error["details"], (url, error)
    assert inside.hits == [], "no request reached the internal server"
    assert images(api, "name=ssrf") == []


def test_an_allowance_covers_what_it_names_and_redirects_are_checked_at_each_hop(
        fresh_server: Server, c1: DevCluster, pool: str, web) -> None:  # type: ignore[no-untyped-def]
    api = start(fresh_server, "127.0.0.1/32")
    storage = add_storage(api, c1, pool)
    allowed = web("127.0.0.1")
    other = web("127.0.0.2")
    allowed.target = other.url("/secret")
    inv = added(api, add_image(api, allowed.url("/secret"), [storage], name="allowed"))
    assert inv["status"] == "Ready", "the allowance lets 127.0.0.1 through"

    error = failed(api, add_image(api, allowed.url("/go"), [storage], name="redirected"), timeout=30)
    assert error["code"] == "SYS.1007" and "redirects to" in error["details"], error
    assert other.hits == [], "the redirect's target was never asked"
    assert images(api, "name=redirected") == []
    error = failed(api, add_image(api, other.url("/secret"), [storage], name="redirected"), timeout=30)
    assert error["code"] == "SYS.1007", "127.0.0.2 is not in 127.0.0.1/32"
    assert other.hits == []


def test_a_closed_port_and_a_port_that_is_not_http_look_the_same(
        fresh_server: Server, c1: DevCluster, pool: str, not_http: int) -> None:
    api = start(fresh_server, "127.0.0.1")
    storage = add_storage(api, c1, pool)
    closed = free_port()
    said = []
    for port in (closed, not_http):
        error = failed(api, add_image(api, f"http://127.0.0.1:{port}/disk.raw", [storage], name="probe"),
                       timeout=30)
        said.append(re.sub(rf"\b{port}\b", "PORT", repr(error)))
    assert said[0] == said[1], "a closed port and a non-HTTP one look the same"
    assert "cannot download from url[http://127.0.0.1:PORT/disk.raw]" in said[0]
    assert images(api, "name=probe") == []
