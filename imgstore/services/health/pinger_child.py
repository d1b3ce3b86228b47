"""The pinger child: answers the tracker's Ceph questions on a pipe (see ``pinger.py``).

It runs as ``python -m imgstore.services.health.pinger_child`` and imports only what
asking Ceph takes (``imgstore.ceph``, ``checks``, the handles registry): no database, no
SSH, no web framework, so it starts fast and holds little memory (a test keeps it so:
tests/unit/test_import_rules.py). Requests are JSON lines ``{id, op, ...}`` on stdin,
answered as ``{id, ...}`` on stdout, each concurrently; it ends when stdin closes.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from dataclasses import asdict
from typing import Any

from imgstore import ceph
from imgstore.errors import OPERATION_ERROR, ApiError
from imgstore.services.health.checks import health_of
from imgstore.services.node.ceph_errors import ceph_error
from imgstore.services.node.handles import ClusterRegistry

log = logging.getLogger(__name__)

NICE = 19  # the lowest priority: the API first, whenever both want a core


async def serve(timeout: float) -> None:
    """Answer requests from stdin, each concurrently, until it closes."""
    loop = asyncio.get_running_loop()
    requests = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(requests), sys.stdin)
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # nothing else may write the protocol's pipe
    handles = ClusterRegistry(str, timeout)  # keys arrive opened
    pending: set[asyncio.Task[None]] = set()  # held, so no answer is collected half-way

    async def answer(request: dict[str, Any]) -> None:
        reply = await _answer(handles, request)
        out.write(json.dumps({"id": request.get("id"), **reply}).encode() + b"\n")

    while line := await requests.readline():
        task = asyncio.create_task(answer(json.loads(line)))
        pending.add(task)
        task.add_done_callback(pending.discard)


async def _answer(handles: ClusterRegistry, request: dict[str, Any]) -> dict[str, Any]:
    """One request's reply: its result, or the ApiError it raised."""
    try:
        op = request["op"]
        if op == "forget":
            await handles.forget(request["storage"])
            return {}
        if op == "health":
            health = await health_of(await _handle(handles, request), request["pool"], request["storage"])
            return {
                "quorum": sorted(health.quorum),
                "capacity": asdict(health.capacity) if health.capacity else None,
                "pool_error": _ceph_error_to(health.pool_error) if health.pool_error else None,
            }
        if op == "check_key":
            return {"refused": await _refused(handles, request)}
        raise ApiError(OPERATION_ERROR, f"the pinger has no operation {op!r}")
    except ApiError as e:
        return {"error": {"code": e.kind.code, "details": e.details, "status": e.status, "opaque": e.opaque}}
    except Exception as e:
        log.exception("pinger: %s failed", request.get("op"))
        return {"error": {"code": OPERATION_ERROR.code, "details": f"the pinger failed: {type(e).__name__}",
                          "status": 503, "opaque": None}}


async def _handle(handles: ClusterRegistry, request: dict[str, Any]) -> ceph.Cluster:
    return await handles.connected(request["storage"], request["mon_host"], request["client"], request["key"])


async def _refused(handles: ClusterRegistry, request: dict[str, Any]) -> str | None:
    """Why a fresh login with the storage's key was refused, or None. A refused login
    looks like a timeout, so mons that do not answer are not a refusal (nor is a handle
    that cannot connect): that, like any other failure, is the ping's to report."""
    try:
        await (await _handle(handles, request)).check_key()
    except ceph.CephPermissionDenied as e:
        return ceph_error(e).details
    except (ceph.CephError, ApiError):
        return None
    return None


def _ceph_error_to(e: ceph.CephError) -> dict[str, Any]:
    """A Ceph error as the pipe carries it (its kind by name, its message, its host)."""
    return {"kind": type(e).__name__, "message": str(e), "host": e.host}


def ceph_error_from(wire: dict[str, Any]) -> ceph.CephError:
    """The parent's side of ``_ceph_error_to``: the same kind of ``CephError`` again."""
    kind = getattr(ceph, wire["kind"], None)
    if not (isinstance(kind, type) and issubclass(kind, ceph.CephError)):
        kind = ceph.CephError
    return kind(wire["message"], wire["host"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m imgstore.services.health.pinger_child", description=__doc__)
    parser.add_argument("--timeout", type=float, required=True, help="the Ceph timeout, in seconds")
    args = parser.parse_args(argv)
    os.nice(NICE)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.timeout))
    # no goodbye to the mons: a dead cluster's handle would hold the exit for a Ceph
    # timeout, and the sockets close with the process
    os._exit(0)


if __name__ == "__main__":
    main()
