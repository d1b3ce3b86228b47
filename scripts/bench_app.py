#!/usr/bin/env python3
"""Benchmark: what one request costs inside the ASGI application, with no socket and no client.

The HTTP benchmarks (bench_api.py) measure the server through a client on the same two
cores, so their figures move with the client and the machine's load. This one calls the
application object directly, one request after another, and prints the CPU time each
request takes inside it, beside a bare FastAPI route that returns a constant (the
framework's floor), timed the same way in the same process:

* GetBackupStorageTypes: no database; the same request each time, so after the first one
  a kept reply answers it (api/reply_cache.py: the database version, the middlewares)
* a paged query of the same page each time: the same, with a bigger reply
* a paged query (``limit=20``) and a get by uuid over N storages, each request one never
  asked before: the page from the list kept of the storages (api/kept_pages.py), after the
  request that built it (its time printed too); the get by its handler: session check,
  routing, the database (SQLite, or an empty database at ``IMGSTORE_DB_URL``)
* the same paged query with no list kept (``kept_list_rows=0``): its handler
* a paged query of M images (100 000), from their kept list, after the request that built it

    .venv/bin/python scripts/bench_app.py [--storages 10000] [--requests 1000]

Each figure is the best of five batches: the machine is shared and the lowest figure is
the one least disturbed by it.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from fastapi import FastAPI

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_api import FLOOR_APP, PASSWORD, fill  # noqa: E402

App = Callable[[dict, Any, Any], Awaitable[None]]


def floor_app() -> FastAPI:
    """bench_api's floor route, here in this process instead of its own uvicorn."""
    namespace: dict[str, Any] = {}
    exec(FLOOR_APP, namespace)
    return namespace["app"]


async def call(app: App, path: str, headers: list[tuple[bytes, bytes]]) -> int:
    """One GET through the ASGI interface; the response's status."""
    route, _, query = path.partition("?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": route, "raw_path": route.encode(), "query_string": query.encode(), "root_path": "",
        "headers": [(b"host", b"bench"), *headers], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        "state": {},
    }
    status = 0

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def per_request_ms(app: App, path_of: Callable[[int], str], headers: list[tuple[bytes, bytes]],
                         n: int) -> tuple[float, float]:
    """Best of five batches of n requests: ms per request, wall and CPU (the process's,
    every thread: the SQLite readings run in a pool); every answer must be 200."""
    for i in range(min(n, 200)):  # warm-up: statement caches, first connections
        await call(app, path_of(i), headers)
    best, best_cpu = float("inf"), float("inf")
    for _ in range(5):
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            status = await call(app, path_of(i), headers)
            if status != 200:
                raise RuntimeError(f"{path_of(i)} answered {status}")
        best = min(best, (time.perf_counter() - t0) / n * 1000)
        best_cpu = min(best_cpu, (time.process_time() - c0) / n * 1000)
    return best, best_cpu


async def run(args: argparse.Namespace) -> None:
    from imgstore.config import Settings

    uuids = await fill(Settings(), args.storages, args.images)
    # requests never asked before, so no kept reply answers them
    rnd, asked = random.Random(1), 6 * args.requests + 250
    starts = iter(rnd.sample(range(args.storages - 20), min(asked, args.storages - 20)))
    fresh_uuids = iter(rnd.sample(uuids, min(asked, len(uuids))))
    image_starts = iter(rnd.sample(range(max(args.images - 20, 1)), min(asked, max(args.images - 20, 1))))
    cases: dict[str, Callable[[int], str]] = {
        "GetBackupStorageTypes": lambda i: "/zstack/v1/backup-storage/types",
        "paged query, same page": lambda i: f"/zstack/v1/backup-storage?limit=20&start={args.storages // 2}",
        "paged query (limit=20)": lambda i: f"/zstack/v1/backup-storage?limit=20&start={next(starts)}",
        "get by uuid": lambda i: f"/zstack/v1/backup-storage/{next(fresh_uuids)}",
        "paged image query (limit=20)": lambda i: f"/zstack/v1/images?limit=20&start={next(image_starts)}",
    }
    floor, floor_cpu = await per_request_ms(floor_app(), lambda i: "/zstack/v1/constant", [], args.requests)
    print(f"{'request':<40}{'ms/request':>12}{'x floor':>9}{'CPU ms':>9}")
    print(f"{'floor: constant route':<40}{floor:>12.3f}{1:>9.1f}{floor_cpu:>9.3f}")
    async with serving(Settings()) as (app, headers):
        for name in ("paged query", "paged image query"):  # each list's build: the slowest of its first requests
            ms, cpu = max([await timed(app, cases[f"{name} (limit=20)"](i), headers) for i in range(50)])
            print(f"{name + ': the request that built':<40}{ms:>12.3f}{ms / floor:>9.1f}{cpu:>9.3f}")
        for name, path_of in cases.items():
            ms, cpu = await per_request_ms(app, path_of, headers, args.requests)
            kept = " (kept list)" if name == "paged query (limit=20)" else ""
            print(f"{name + kept:<40}{ms:>12.3f}{ms / floor:>9.1f}{cpu:>9.3f}")
    async with serving(Settings(kept_list_rows=0)) as (app, headers):  # a new app: nothing kept yet
        starts = iter(rnd.sample(range(args.storages - 20), min(asked, args.storages - 20)))
        ms, cpu = await per_request_ms(app, cases["paged query (limit=20)"], headers, args.requests)
        print(f"{'paged query (limit=20), its handler':<40}{ms:>12.3f}{ms / floor:>9.1f}{cpu:>9.3f}")


@contextlib.asynccontextmanager
async def serving(settings: Any) -> AsyncIterator[tuple[Any, list[tuple[bytes, bytes]]]]:
    """The app started with ``settings``, and the headers of a session of it."""
    import httpx

    from imgstore.app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
            login = await client.put("/zstack/v1/accounts/login", json={"logInByAccount": {
                "accountName": "admin", "password": hashlib.sha512(PASSWORD.encode()).hexdigest()}})
        yield app, [(b"authorization", f"OAuth {login.json()['inventory']['uuid']}".encode())]


async def timed(app: App, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[float, float]:
    """One request's ms, wall and CPU."""
    t0, c0 = time.perf_counter(), time.process_time()
    if await call(app, path, headers) != 200:
        raise RuntimeError(f"{path}: not 200")
    return (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storages", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--images", type=int, default=100_000, help="images")
    args = ap.parse_args()
    os.environ.update({"IMGSTORE_DATA_DIR": tempfile.mkdtemp(prefix="bench-app-"), "IMGSTORE_PING_INTERVAL": "0",
                       "IMGSTORE_ADMIN_PASSWORD": PASSWORD, "IMGSTORE_SECRET_KEY": Fernet.generate_key().decode()})
    db = "IMGSTORE_DB_URL" in os.environ
    print(f"{args.storages} storages, {args.images} images in {'the database at IMGSTORE_DB_URL' if db else 'SQLite'}; "
          f"best of 5 batches of {args.requests} requests, no socket, one request at a time")
    try:
        asyncio.run(run(args))
    finally:
        shutil.rmtree(os.environ["IMGSTORE_DATA_DIR"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
