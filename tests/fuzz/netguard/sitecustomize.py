"""Loaded by the fuzzed server only (its PYTHONPATH): no traffic beyond loopback, ever.

The fuzz test rewrites every host it sends to 127.0.0.1; this audit hook is the second
wall. A connect, a send or a name lookup towards anything but a loopback address fails
like an unreachable network, and is written to ``IMGSTORE_FUZZ_NETGUARD_LOG`` so the
test can fail on the request that caused it.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys

_LOG = os.environ.get("IMGSTORE_FUZZ_NETGUARD_LOG", "")
_INET = (socket.AF_INET, socket.AF_INET6)


def _is_loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host is None or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(str(host).strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False  # a name: resolving it may ask a DNS server off this host


def _blocked(event: str, target: object) -> None:
    if _LOG:
        with open(_LOG, "a", encoding="utf-8") as f:
            f.write(f"BLOCKED {event} {target!r}\n")


def _hook(event: str, args: tuple) -> None:
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        sock, address = args[0], args[-1]
        if getattr(sock, "family", None) in _INET and isinstance(address, tuple) and not _is_loopback(address[0]):
            _blocked(event, address)
            raise OSError(errno.ENETUNREACH, f"fuzz network guard: no traffic to {address[0]}")
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex"):
        if not _is_loopback(args[0]):
            _blocked(event, args[0])
            raise socket.gaierror(socket.EAI_NONAME, f"fuzz network guard: no lookup of {args[0]!r}")


sys.addaudithook(_hook)
