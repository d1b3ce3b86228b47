"""Which hosts an http(s) image source may reach, and connections pinned to the checked address.

AddImage downloads whatever URL a caller names, from inside the operator's network. So a
source host must resolve only to public addresses: loopback, link-local (the metadata
service at 169.254.169.254), private (RFC 1918, CGNAT, ULA), unspecified, multicast and
reserved addresses are refused, also when written as IPv4-mapped, 6to4 or NAT64 IPv6,
or in the decimal/hex spellings the C resolver accepts (``2130706433``, ``0x7f.1``): the
check is made on what ``getaddrinfo`` answers, not on the text. The setting
``image_url_allow`` names hosts and networks that are allowed anyway (a mirror on the
LAN, a test server on loopback).

A name is resolved once per request (off the event loop), every address it gives is
checked, and the connection goes to one of those addresses: :class:`PinnedBackend` is
the httpcore network backend that maps the host name to them, so DNS cannot answer
differently between the check and the connect (rebinding). The URL keeps its host name,
so the Host header, TLS SNI and certificate verification are all the name's.
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SETTING = "IMGSTORE_IMAGE_URL_ALLOW"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class HostRefused(ValueError):
    """The host resolves to an address imgstore does not download from."""


class HostUnresolved(OSError):
    """The host name does not resolve."""


@dataclass(frozen=True)
class Allowance:
    """The setting ``image_url_allow``: host names and networks allowed although not public."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowance:
        """Entries are CIDRs, single addresses or host names; ValueError on one that is none."""
        hosts: set[str] = set()
        networks: list[Network] = []
        for entry in (e.strip() for e in entries):
            if not entry:
                continue
            network = _network(entry)
            if network is not None:
                networks.append(network)
            elif _is_host_name(entry):
                hosts.add(_host_key(entry))
            else:
                raise ValueError(f"[{entry}] is neither a network (CIDR), an address nor a host name")
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return _host_key(host) in self.hosts

    def allows_address(self, address: Address) -> bool:
        """Public, or inside an allowed network (an IPv4-mapped address as its IPv4 one)."""
        forms = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            forms.append(address.ipv4_mapped)
        if any(a in n for a in forms for n in self.networks if a.version == n.version):
            return True
        return is_public(address)


def is_public(address: Address) -> bool:
    """True for an address on the public internet; False for every kind that reaches
    the server itself or its own networks, including IPv4 ones wrapped in IPv6."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped
        if inner is None and address in _NAT64:
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if inner is not None:
            return is_public(inner)
        if address.sixtofour is not None and not is_public(address.sixtofour):
            return False
        if address.teredo is not None or address.is_site_local:
            return False
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_link_local or address.is_loopback
        or address.is_unspecified or address.is_private
    )


async def resolve(host: str, port: int, allowance: Allowance) -> list[str]:
    """Every address of ``host``, all checked: HostRefused when one is not allowed,
    HostUnresolved when there is none. ``getaddrinfo`` runs in the loop's executor."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as e:
        raise HostUnresolved(f"{host}: {e}") from None
    addresses = list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))
    if not addresses:
        raise HostUnresolved(f"{host}: no address")
    if allowance.allows_host(host):
        return addresses
    for text in addresses:
        if not allowance.allows_address(ipaddress.ip_address(text)):
            raise HostRefused(f"{host} resolves to {text}")
    return addresses


# ---------------------------------------------------------------- connections to the checked address


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend that connects a host name only to the addresses
    :meth:`pin` was given for it, trying them in order. A host that was not pinned is
    not connected at all (fail closed), so every connection follows a check."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.AnyIOBackend()
        self._pins: dict[str, list[str]] = {}

    def pin(self, host: str, addresses: Sequence[str]) -> None:
        self._pins[_host_key(host)] = list(addresses)

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        addresses = self._pins.get(_host_key(host))
        if not addresses:
            raise httpcore.ConnectError(f"{host} was not checked before connecting")
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                last = e
        assert last is not None
        raise last

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("image sources are not read over unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport on a :class:`PinnedBackend` (httpx takes no network backend of
    its own, so its connection pool is made again with one; httpx is pinned in
    pyproject.toml)."""

    def __init__(self, backend: PinnedBackend, verify: ssl.SSLContext | None = None) -> None:
        context = verify or _default_context()
        super().__init__(verify=context)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context, max_connections=4, max_keepalive_connections=2, network_backend=backend)


@functools.cache
def _default_context() -> ssl.SSLContext:
    """The system's CAs, loaded once (loading them takes a while, and a context is
    safe to share between clients)."""
    return httpx.create_ssl_context()


def pinned_client(timeout: httpx.Timeout, verify: ssl.SSLContext | None = None,
                  headers: dict[str, str] | None = None) -> tuple[httpx.AsyncClient, PinnedBackend]:
    """A client that follows no redirect, reads no proxy or netrc from the environment,
    and connects only where its backend was pinned."""
    backend = PinnedBackend()
    client = httpx.AsyncClient(transport=PinnedTransport(backend, verify), timeout=timeout,
                               follow_redirects=False, trust_env=False, headers=headers)
    return client, backend


def _network(entry: str) -> Network | None:
    try:
        return ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return None


def _is_host_name(entry: str) -> bool:
    labels = _host_key(entry).split(".")
    return all(0 < len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum() and label.isascii()
               for label in labels)


def _host_key(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()
