#!/usr/bin/env python3
"""Benchmark: API latency and throughput with 10,000 storages and 100,000 images.

For each database (SQLite file, and PostgreSQL at 127.0.0.1:5432 when it answers) a
fresh imgstore database is filled with N backup storages and M images, a real server is
started on loopback (tracker off: the storages point at no cluster), and a concurrent
client measures p50/p99 latency and requests per second of:

* a paged query      GET /zstack/v1/backup-storage?limit=20&start=<random>
* a query by name    GET /zstack/v1/backup-storage?q=name~=bs-0042%
* a get by uuid      GET /zstack/v1/backup-storage/<uuid>
* a paged image query GET /zstack/v1/images?limit=20&start=<random>

beside the same figures for a bare FastAPI route that returns a constant, served by the
same uvicorn in the same run (the framework's floor), measured again right before each
call because the machine is shared and its load drifts.

With 16 requests in flight, p50 is mostly queueing (p50 ~ 16 / req/s: the floor itself
shows ~13 ms at 1200 req/s), so "p50 alone" is also given: requests one at a time, the
time one request takes on an otherwise idle server. "kept" is the share of requests a
kept reply answered (api/reply_cache.py: the same request again, nothing committed since).

Then each call through wrk, a client in C that can outrun the server: one request again
and again (the kept reply's figure), and a different page, name or uuid each time (the
handler's figure).
Targets: paged query p50 <= 10 ms; >= 40 % of the floor's requests per second.

    .venv/bin/python scripts/bench_api.py [--storages 10000] [--images 100000] [--requests 2000]
        [--db sqlite|postgresql] [--only WORDS]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import TypeVar

import httpx
from cryptography.fernet import Fernet
from sqlalchemy import insert, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from _bench import Server, free_port  # noqa: E402

from imgstore.config import Settings  # noqa: E402
from imgstore.db.models import BackupStorage, CephMon, Image, ImageBackupStorageRef  # noqa: E402
from imgstore.services.node.runtime import Runtime  # noqa: E402
from imgstore.wire.dates import utcnow  # noqa: E402

T = TypeVar("T")
PASSWORD = "bench"
FLOOR_APP = """
from fastapi import FastAPI
app = FastAPI()
@app.get("/zstack/v1/constant")
async def constant() -> dict:
    return {"inventories": [], "total": 0}
"""


async def fill(settings: Settings, storages: int, images: int) -> list[str]:
    """Bulk rows straight into the schema imgstore migrated."""
    rt = await Runtime.open(settings)
    now = utcnow()
    sealed = rt.secrets.seal("unused")
    bs_uuids = [uuidlib.uuid4().hex for _ in range(storages)]
    async with rt.engine.begin() as conn:
        for i in range(0, storages, 2000):
            chunk = list(enumerate(bs_uuids[i:i + 2000], start=i))
            await conn.execute(insert(BackupStorage.__table__), [dict(
                uuid=u, name=f"bs-{n:05d}", description=None, url="not used", type="Ceph", state="Enabled",
                status="Connected", total_capacity=10 << 40, available_capacity=(5 << 40) + n, status_reason=None,
                fsid=f"bench-{u}", pool_name=f"pool-{n}", pool_created=False, ceph_client=None, ceph_key=None,
                adding_node=None, create_date=now, last_op_date=now) for n, u in chunk])
            await conn.execute(insert(CephMon.__table__), [dict(
                uuid=uuidlib.uuid4().hex, backup_storage_uuid=u, hostname=f"mon-{n}.invalid", mon_addr="127.0.0.1",
                mon_port=6789, ssh_port=22, ssh_username="root", ssh_password=sealed, status="Connected",
                create_date=now, last_op_date=now) for n, u in chunk])
        for i in range(0, images, 5000):
            rows = [(uuidlib.uuid4().hex, n) for n in range(i, min(i + 5000, images))]
            await conn.execute(insert(Image.__table__), [dict(
                uuid=u, name=f"img-{n:06d}", state="Enabled", status="Ready", size=1 << 30, actual_size=1 << 30,
                url="upload://", media_type="RootVolumeTemplate", type="zstack", format="raw", system=False,
                virtio=True, create_date=now, last_op_date=now) for u, n in rows])
            await conn.execute(insert(ImageBackupStorageRef.__table__), [dict(
                image_uuid=u, backup_storage_uuid=bs_uuids[n % storages], install_path=f"ceph://p/{u}",
                status="Ready", create_date=now, last_op_date=now) for u, n in rows])
    # what autovacuum does within a minute of a bulk load (it is off on the dev PostgreSQL):
    # planner statistics, without which a fresh table looks empty to the planner, and on
    # PostgreSQL the visibility map that lets an OFFSET walk the paging index alone
    async with rt.engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE" if conn.dialect.name == "postgresql" else "ANALYZE"))
    await rt.close()
    return bs_uuids


def start(cmd: list[str], env: dict[str, str], probe: str) -> subprocess.Popen:
    """The floor: a bare uvicorn app (imgstore's own server starts through _bench.Server)."""
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            httpx.get(probe, timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not start: {cmd}")


async def load(base: str, headers: dict[str, str], path_of, n: int, concurrency: int) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, requests/s) of n requests from `concurrency` workers."""
    times: list[float] = []
    counter = iter(range(n))
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            for i in counter:
                t0 = time.perf_counter()
                r = await client.get(path_of(i))
                times.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code} {r.text[:200]}")
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    times.sort()
    return statistics.median(times) * 1000, times[int(len(times) * 0.99) - 1] * 1000, n / elapsed


# wrk's Lua: each thread seeded apart, so two threads never ask the same sequence of paths
_WRK_LUA = """
local threads = 0
function setup(thread) threads = threads + 1; thread:set("seed", threads) end
function init(args) math.randomseed(seed * 7919) end
function request() return wrk.format(nil, PATH) end
"""


def wrk(url: str, headers: dict[str, str], concurrency: int, seconds: int = 6,
        lua_path: str | None = None, lua_globals: str = "") -> tuple[float, float, float] | None:
    """(p50 ms, p99 ms, requests/s) of one URL from wrk, a client in C, or None without wrk.

    The Python client above is busy at ~700 req/s on this machine, which is also the
    floor's figure with it: wrk shows what the server itself can do. ``lua_path`` is a
    Lua expression for each request's path (a different page, name or uuid each time),
    which may use what ``lua_globals`` defines once per thread."""
    if not shutil.which("wrk"):
        return None
    cmd = ["wrk", "-t", str(min(2, concurrency)), "-c", str(concurrency), "-d", f"{seconds}s", "--latency"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        if lua_path:
            script.write(lua_globals + _WRK_LUA.replace("PATH", lua_path))
            script.flush()
            cmd += ["-s", script.name]
        out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        value = next(line.split()[-1] for line in out.splitlines() if line.strip().startswith(label))
        unit = re.search(r"[a-z]+$", value).group()  # type: ignore[union-attr]
        return float(value[: -len(unit)]) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    rps = float(next(line.split()[-1] for line in out.splitlines() if "Requests/sec" in line))
    return ms("50%"), ms("99%"), rps


class KeptShare:
    """The share of the requests made inside the block that a kept reply answered
    (api/reply_cache.py), from the server's own counters in /metrics."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.share: float | None = None

    def counts(self) -> tuple[float, float]:
        text = httpx.get(f"{self.base}/metrics").text
        found = dict(re.findall(r'^imgstore_reply_cache_requests_total\{result="(\w+)"\} (\S+)$', text, re.M))
        return float(found.get("hit", 0)), float(found.get("miss", 0))

    def __enter__(self) -> KeptShare:
        self.before = self.counts()
        return self

    def __exit__(self, *exc: object) -> None:
        (hit0, miss0), (hit1, miss1) = self.before, self.counts()
        total = hit1 - hit0 + miss1 - miss0
        self.share = (hit1 - hit0) / total if total else None


def through_wrk(base: str, headers: dict[str, str], floor: tuple[str, dict], args: argparse.Namespace,
                uuids: list[str]) -> None:
    """Each call twice through wrk: one request again and again (answered by a kept reply
    while nothing changes), and a different one each time (each answered by its handler);
    beside the floor, measured again before each, and imgstore's own floor: a route with no
    database work (GetBackupStorageTypes), which still passes the session check, the
    middlewares and the routing."""
    floor_base, floor_headers = floor
    uuid_table = "UUIDS = {" + ",".join(f'"{u}"' for u in uuids) + "}\n"
    prefix = "/zstack/v1/backup-storage"
    calls = [
        ("GetBackupStorageTypes", f"{base}{prefix}/types", None),
        ("paged query, same page", f"{base}{prefix}?limit=20&start={args.storages // 2}", None),
        ("paged query, any page", f"{base}{prefix}",
         f'"{prefix}?limit=20&start=" .. math.random(0, {args.storages - 21})'),
        ("query by name, same", f"{base}{prefix}?q=name~=bs-0042%25", None),
        ("query by name, any", f"{base}{prefix}",
         f'"{prefix}?q=name~=bs-0" .. string.format("%03d", math.random(0, 999)) .. "%25"'),
        ("get by uuid, same", f"{base}{prefix}/{uuids[len(uuids) // 2]}", None),
        ("get by uuid, any", f"{base}{prefix}",
         f'"{prefix}/" .. UUIDS[math.random(1, {len(uuids)})]'),
    ]
    print(f"with wrk (C client, concurrency {args.concurrency}, 6 s each; floor measured right before each):")
    print(f"{'call':<26}{'p50':>9}{'p99':>9}{'req/s':>9}{'floor':>7}{'of floor':>10}{'kept':>6}")
    for name, (url, lua_path) in _chosen({name: (url, lua) for name, url, lua in calls}, args.only).items():
        fast = wrk(f"{floor_base}/zstack/v1/constant", floor_headers, args.concurrency)
        with KeptShare(base) as kept:
            p50, p99, rps = wrk(url, headers, args.concurrency, lua_path=lua_path,  # type: ignore[misc]
                                lua_globals=uuid_table)
        assert fast is not None
        share = "" if kept.share is None else f"{kept.share:>6.0%}"
        print(f"{name:<26}{p50:>7.2f}ms{p99:>7.1f}ms{rps:>9.0f}{fast[2]:>7.0f}{rps / fast[2]:>10.0%}{share}")


def _chosen(calls: dict[str, T], only: str | None) -> dict[str, T]:
    """The calls whose name holds ``only`` (all without it)."""
    return {name: call for name, call in calls.items() if only is None or only in name}


def pg_database() -> str | None:
    try:
        import psycopg
        name = f"imgstore_bench_{uuidlib.uuid4().hex[:8]}"
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True, connect_timeout=3) as c:
            c.execute(f"CREATE DATABASE {name}")
        return name
    except Exception as e:
        print(f"PostgreSQL: skipped ({e})")
        return None


def drop_pg(name: str) -> None:
    import psycopg
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def run(label: str, db_url: str | None, args: argparse.Namespace, floor: tuple[str, dict]) -> None:
    data = Path(tempfile.mkdtemp(prefix="bench-api-"))
    env = {"IMGSTORE_DATA_DIR": str(data), "IMGSTORE_ADMIN_PASSWORD": PASSWORD, "IMGSTORE_PING_INTERVAL": "0",
           "IMGSTORE_SECRET_KEY": Fernet.generate_key().decode()}
    if db_url:
        env["IMGSTORE_DB_URL"] = db_url
    os.environ.update(env)
    if not db_url:
        os.environ.pop("IMGSTORE_DB_URL", None)
    t0 = time.perf_counter()
    uuids = asyncio.run(fill(Settings(), args.storages, args.images))
    print(f"\n[{label}] filled {args.storages} storages, {args.images} images in {time.perf_counter() - t0:.1f} s")
    server = Server(data, env=env, password=PASSWORD, log_level="warning").start()
    try:
        base = server.url
        api = server.login()
        headers = {"Authorization": api.headers["Authorization"]}
        api.close()
        rnd = random.Random(1)
        cases = {
            "paged query (limit=20)":
                lambda i: f"/zstack/v1/backup-storage?limit=20&start={rnd.randrange(args.storages - 20)}",
            "query by name (~=)": lambda i: f"/zstack/v1/backup-storage?q=name~=bs-0{rnd.randrange(1000):03d}%25",
            "get by uuid": lambda i: f"/zstack/v1/backup-storage/{uuids[rnd.randrange(len(uuids))]}",
            "paged image query": lambda i: f"/zstack/v1/images?limit=20&start={rnd.randrange(args.images - 20)}",
        }
        floor_base, floor_headers = floor
        asyncio.run(load(base, headers, cases["get by uuid"], 100, args.concurrency))  # warm-up

        def floor_load(n: int, concurrency: int) -> tuple[float, float, float]:
            return asyncio.run(load(floor_base, floor_headers, lambda i: "/zstack/v1/constant", n, concurrency))

        rows = []
        for name, path_of in _chosen(cases, args.only).items():
            # the floor right before each call: the machine is shared, its load drifts
            _, _, frps = floor_load(args.requests, args.concurrency)
            with KeptShare(base) as kept:
                p50, p99, rps = asyncio.run(load(base, headers, path_of, args.requests, args.concurrency))
            alone, _, _ = asyncio.run(load(base, headers, path_of, args.alone, 1))
            rows.append((name, p50, p99, rps, frps, alone, kept.share))
        f50, f99, frps = floor_load(args.requests, args.concurrency)
        alone, _, _ = floor_load(args.alone, 1)
        print(f"{'call':<26}{'p50':>9}{'p99':>9}{'req/s':>9}{'floor':>7}{'of floor':>10}{'p50 alone':>11}{'kept':>6}")
        for name, p50, p99, rps, floor_rps, p50_alone, share in [
                ("floor: constant route", f50, f99, frps, frps, alone, None), *rows]:
            print(f"{name:<26}{p50:>7.1f}ms{p99:>7.1f}ms{rps:>9.0f}{floor_rps:>7.0f}{rps / floor_rps:>10.0%}"
                  f"{p50_alone:>9.1f}ms"
                  f"{'' if share is None else f'{share:>6.0%}'}")
        if shutil.which("wrk"):
            through_wrk(base, headers, floor, args, uuids)
    finally:
        server.stop()
        subprocess.run(["rm", "-rf", str(data)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storages", type=int, default=10_000)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--alone", type=int, default=300, help="requests one at a time, for 'p50 alone'")
    ap.add_argument("--db", choices=("sqlite", "postgresql"), help="only this database (both by default)")
    ap.add_argument("--only", help="only the calls whose name holds this, e.g. 'any page'")
    args = ap.parse_args()
    floor_dir = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    (floor_dir / "floor_app.py").write_text(FLOOR_APP)
    port = free_port()
    floor = start([sys.executable, "-m", "uvicorn", "floor_app:app", "--port", str(port), "--log-level", "warning",
                   "--no-access-log"], {"PYTHONPATH": str(floor_dir)}, f"http://127.0.0.1:{port}/zstack/v1/constant")
    try:
        print(f"concurrency {args.concurrency}, {args.requests} requests per call, "
              "client and server on loopback, 2 cores")
        if args.db != "postgresql":
            run("SQLite", None, args, (f"http://127.0.0.1:{port}", {}))
        name = pg_database() if args.db != "sqlite" else None
        if name:
            try:
                pg_url = f"postgresql://postgres@127.0.0.1:5432/{name}"
                run("PostgreSQL", pg_url, args, (f"http://127.0.0.1:{port}", {}))
            finally:
                drop_pg(name)
        print("\ntargets: paged query p50 <= 10 ms; >= 40 % of the floor's requests per second"
              "\n(floor: the constant route's req/s right before the call; p50 alone: one request at a time)")
        return 0
    finally:
        floor.terminate()
        floor.wait(10)
        subprocess.run(["rm", "-rf", str(floor_dir)])


if __name__ == "__main__":
    sys.exit(main())
