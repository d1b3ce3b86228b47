"""Which addresses an http(s) image source may reach, and that the connection goes to the
address that was checked (url_guard; point 5 of the Trust issue)."""
from __future__ import annotations

import asyncio
import datetime
import http.server
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpcore
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from imgstore.services.images.sources import HttpSource, SourceFailed, SourceRefused
from imgstore.services.images.url_guard import Allowance, HostRefused, is_public, resolve

MiB = 1 << 20
REAL_GETADDRINFO = socket.getaddrinfo


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def read_all(source) -> bytes:  # type: ignore[no-untyped-def]
    async with source:
        return b"".join([piece async for piece in source.chunks()])


# ---------------------------------------------------------------- addresses


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.255.0.9", "::1", "0.0.0.0", "::", "169.254.169.254", "fe80::1", "10.1.2.3",
    "172.16.0.1", "192.168.0.1", "100.64.0.1", "fc00::1", "fd12::1", "fec0::1", "224.0.0.1",
    "239.1.1.1", "ff02::1", "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "2002:7f00:1::1", "2002:a00:1::", "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe", "2001::1",
])
def test_addresses_of_the_servers_own_networks_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.215.14", "2606:4700::1111", "::ffff:8.8.8.8",
                                     "2002:808:808::1", "64:ff9b::808:808"])
def test_public_addresses_are(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def test_an_allowance_names_networks_addresses_and_hosts() -> None:
    allow = Allowance.parse(["10.0.0.0/8", " 127.0.0.1", "[::1]", "Mirror.LAN.", ""])
    assert allow.allows_host("mirror.lan") and allow.allows_host("MIRROR.lan.")
    assert not allow.allows_host("other.lan")
    for address in ("10.9.9.9", "127.0.0.1", "::1", "::ffff:127.0.0.1", "8.8.8.8"):
        assert allow.allows_address(ipaddress.ip_address(address)), address
    for address in ("127.0.0.2", "192.168.1.1", "169.254.169.254"):
        assert not allow.allows_address(ipaddress.ip_address(address)), address
    with pytest.raises(ValueError, match="neither"):
        Allowance.parse(["not a host!"])


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "2130706433", "0x7f.1", "127.1", "0", "::1",
                                  "::ffff:127.0.0.1"])
def test_every_spelling_of_loopback_is_refused_after_resolving(host: str) -> None:
    with pytest.raises(HostRefused):
        run(resolve(host, 80, Allowance()))


def test_an_allowed_host_or_network_resolves() -> None:
    assert run(resolve("2130706433", 80, Allowance.parse(["127.0.0.1/32"]))) == ["127.0.0.1"]
    assert "127.0.0.1" in run(resolve("localhost", 80, Allowance.parse(["localhost"])))


# ---------------------------------------------------------------- pinned connections


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names whose next answers the test decides (one list element per call, the last
    kept); calls are recorded. Other names resolve as usual."""
    answers: dict[str, list[str]] = {}
    calls: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        name = host.decode() if isinstance(host, bytes) else host
        if name not in answers:
            return REAL_GETADDRINFO(host, port, *args, **kwargs)
        calls.append(name)
        queue = answers[name]
        address = queue.pop(0) if len(queue) > 1 else queue[0]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    answers["calls"] = calls  # type: ignore[assignment]
    return answers


def serve(handler_body: bytes, context: ssl.SSLContext | None = None) -> tuple[http.server.HTTPServer, list[str]]:
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, body: bool) -> None:
            hits.append(f"{self.command} {self.headers.get('Host')}")
            self.send_response(200)
            self.send_header("Content-Length", str(len(handler_body)))
            self.end_headers()
            if body:
                self.wfile.write(handler_body)

        def do_HEAD(self) -> None:
            self._answer(False)

        def do_GET(self) -> None:
            self._answer(True)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if context is not None:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, hits


@pytest.fixture
def loopback() -> Iterator[tuple[int, list[str]]]:
    httpd, hits = serve(b"secret")
    yield httpd.server_address[1], hits
    httpd.shutdown()
    httpd.server_close()


def test_the_connection_goes_to_the_checked_address_not_a_second_answer(
        fake_dns: dict, loopback: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the name answers a public address to the check, then loopback. The
    connection goes to the public one (refused here, offline) and nothing reaches loopback."""
    port, hits = loopback
    fake_dns["rebind.test"] = ["93.184.215.14", "127.0.0.1"]
    connected: list[str] = []

    async def connect_tcp(self, host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        connected.append(host)
        if host == "127.0.0.1":
            return await real_connect(self, host, port, *args, **kwargs)
        raise httpcore.ConnectError("offline")

    real_connect = httpcore.AnyIOBackend.connect_tcp
    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", connect_tcp)
    with pytest.raises(SourceFailed) as failed:
        run(read_all(HttpSource(f"http://rebind.test:{port}/secret")))
    assert str(failed.value) == f"cannot download from url[http://rebind.test:{port}/secret]"
    assert connected == ["93.184.215.14"] and fake_dns["calls"] == ["rebind.test"]
    assert hits == []


def test_a_name_that_turns_to_loopback_is_refused(fake_dns: dict, loopback: tuple[int, list[str]]) -> None:
    port, hits = loopback
    fake_dns["turns.test"] = ["127.0.0.1"]
    with pytest.raises(SourceRefused, match="IMGSTORE_IMAGE_URL_ALLOW"):
        run(read_all(HttpSource(f"http://turns.test:{port}/secret")))
    assert hits == []


def test_a_pinned_http_source_keeps_its_host_name(fake_dns: dict, loopback: tuple[int, list[str]]) -> None:
    port, hits = loopback
    fake_dns["mirror.test"] = ["127.0.0.1"]
    got = run(read_all(HttpSource(f"http://mirror.test:{port}/x", allowance=Allowance.parse(["127.0.0.1"]))))
    assert got == b"secret"
    assert hits == [f"HEAD mirror.test:{port}", f"GET mirror.test:{port}"]


# ---------------------------------------------------------------- https: SNI and the certificate stay the name's


def certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_https_is_verified_against_the_host_name_while_connecting_to_the_pinned_address(
        tmp_path: Path, fake_dns: dict) -> None:
    cert_file, key_file = certificate(tmp_path, "images.test")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    names: list[str | None] = []
    server_context.sni_callback = lambda sock, name, ctx: names.append(name)
    body = bytes(range(256)) * 4096
    httpd, hits = serve(body, server_context)
    port = httpd.server_address[1]
    trust = ssl.create_default_context(cafile=str(cert_file))
    allow = Allowance.parse(["127.0.0.1"])
    fake_dns["images.test"] = ["127.0.0.1"]
    fake_dns["other.test"] = ["127.0.0.1"]
    try:
        got = run(read_all(HttpSource(f"https://images.test:{port}/disk.raw", allowance=allow, verify=trust)))
        assert got == body and names[:2] == ["images.test", "images.test"]
        assert hits == [f"HEAD images.test:{port}", f"GET images.test:{port}"]
        # the same address under a name the certificate does not carry: verification fails
        with pytest.raises(SourceFailed, match="cannot download"):
            run(read_all(HttpSource(f"https://other.test:{port}/disk.raw", allowance=allow, verify=trust)))
        assert len(hits) == 2
    finally:
        httpd.shutdown()
        httpd.server_close()
