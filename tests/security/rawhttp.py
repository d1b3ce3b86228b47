"""Raw-socket helpers for the security tests: what a hostile client sends, byte by byte,
and what the server's process costs meanwhile."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path


def rss_kib(pid: int) -> int:
    """The process's resident set (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_reply(sock: socket.socket, limit: float = 10.0) -> bytes:
    """Everything the server sends until it closes or goes quiet for ``limit`` s."""
    sock.settimeout(limit)
    out = b""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            out += data
            if b"\r\n\r\n" in out and _complete(out):
                break
    except (TimeoutError, ConnectionError, OSError):
        pass
    return out


def _complete(reply: bytes) -> bool:
    head, _, body = reply.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def status_of(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1."), reply[:200]
    return int(reply.split(b" ", 2)[1])


def send_while_reading(sock: socket.socket, head: bytes, body_pieces, limit: float = 30.0) -> tuple[bytes, int, float]:
    """Send ``head`` then each piece of ``body_pieces`` while a thread reads the reply (a
    server that answers early and closes must not make us lose its answer).
    The reply, the body bytes the kernel took, and the seconds until the reply came."""
    reply: list[bytes] = []
    started = time.monotonic()
    took: list[float] = []

    def reader() -> None:
        reply.append(read_reply(sock, limit))
        took.append(time.monotonic() - started)

    thread = threading.Thread(target=reader, daemon=True)
    sock.sendall(head)
    thread.start()
    sent = 0
    try:
        for piece in body_pieces:
            if not thread.is_alive():
                break
            sock.sendall(piece)
            sent += len(piece)
    except OSError:
        pass  # the server closed on us: what a bounded server does
    thread.join(limit)
    return (reply[0] if reply else b""), sent, (took[0] if took else limit)
