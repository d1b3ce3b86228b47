#!/usr/bin/env python3
"""Benchmark: the ping tracker with N storages, and the API's latency while it runs.

N Ceph backup storages (default 200, half on dev cluster c1, half on c2, each with a pool
of its own cluster and a real least-privilege key) are registered in a fresh imgstore
database, then:

1. a real server pings them every ``--interval`` seconds; the duration of a full round is
   read from ``/metrics`` (``imgstore_ping_round_seconds``) over several rounds, and the
   CPU the server and its pinger process (services/health/pinger.py) use during steady rounds;
2. the API's p50/p99 latency (a paged query, a query by name with ``~=``, a get by uuid)
   is measured with the tracker idle (a server with the tracker off), then again while
   rounds run and cluster c2's mon is stopped (half the storages time out every round).

Targets: a round of 200 storages in under 2 s; API p99 during rounds within 2x of idle.

    .venv/bin/python scripts/bench_tracker.py [--storages 200] [--requests 400]

The storages are put straight into the database (each cluster's fsid may be added only
once through the API); everything else is the real server against the real clusters.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from _bench import Server, ceph, cluster_env  # noqa: E402

from imgstore.ceph import rbd_client_caps  # noqa: E402
from imgstore.config import Settings  # noqa: E402
from imgstore.crypto import new_uuid  # noqa: E402
from imgstore.db.models import CephBackupStorage, CephMon  # noqa: E402
from imgstore.services.node.runtime import Runtime  # noqa: E402

PASSWORD = "bench"
WARM_UP = 100  # requests of each call before measuring, on each server


def prepare_cluster(env: dict[str, str], tag: str) -> tuple[str, str, str]:
    """A pool and a key for the bench on one cluster: (pool, client, key)."""
    pool, client = f"bench-{tag}", f"imgstore.bench-{tag}"
    ceph(env, "osd", "pool", "create", pool, "8")
    ceph(env, "osd", "pool", "application", "enable", pool, "rbd")
    key = ceph(env, "auth", "get-or-create-key", f"client.{client}", *rbd_client_caps(pool)).strip()
    return pool, client, key


async def register(settings: Settings, clusters: list[tuple[dict[str, str], str, str, str]], n: int) -> list[str]:
    rt = await Runtime.open(settings)
    uuids = []
    async with rt.db() as db:
        for i in range(n):
            env, pool, client, key = clusters[i % len(clusters)]
            bs = new_uuid()
            uuids.append(bs)
            mon = CephMon(uuid=new_uuid(), hostname=f"bench-{i}.invalid", mon_addr="127.0.0.1",
                          mon_port=int(env["CEPH_MON_PORT"]), ssh_port=22, ssh_username="bench",
                          ssh_password=rt.secrets.seal("unused"), status="Connected",
                          mon_host=f"v1:127.0.0.1:{env['CEPH_MON_PORT']}")
            db.add(CephBackupStorage(uuid=bs, name=f"bench-{i:04d}", url="not used", status="Connected",
                                     fsid=f"bench-{uuid.uuid4()}", pool_name=pool, ceph_client=client,
                                     ceph_key=rt.secrets.seal(key), mons=[mon]))
        await db.commit()
    await rt.close()
    return uuids


class Tracked:
    """A started server (``_bench.Server``) with a session, and what the tracker costs it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.server = Server(Path(env["IMGSTORE_DATA_DIR"]), env=env, password=PASSWORD, log_level="warning").start()
        self.proc = self.server.proc
        self.base = self.server.url
        self.headers = {"Authorization": f"OAuth {self.server.session()}"}

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time used so far by the server and by its pinger process (0 if none)."""
        kids = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-f", "imgstore.services.health.pinger"],
                              capture_output=True, text=True).stdout.split()
        return _cpu_seconds(self.proc.pid), sum(_cpu_seconds(int(k)) for k in kids)

    def round_seconds(self) -> float | None:
        m = re.search(r"^imgstore_ping_round_seconds (\S+)$", httpx.get(f"{self.base}/metrics").text, re.M)
        return float(m.group(1)) if m and m.group(1) != "NaN" else None

    def stop(self) -> None:
        self.server.stop()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latencies(server: Tracked, uuids: list[str], n: int) -> dict[str, tuple[float, float]]:
    calls = {
        "paged query (limit=20)": lambda c, i: c.get("/zstack/v1/backup-storage",
                                                      params={"limit": 20, "start": (i * 20) % 180}),
        "query by name (~=)": lambda c, i: c.get("/zstack/v1/backup-storage", params={"q": f"name~=bench-00{i % 10}%"}),
        "get by uuid": lambda c, i: c.get(f"/zstack/v1/backup-storage/{uuids[i % len(uuids)]}"),
    }
    out = {}
    with httpx.Client(base_url=server.base, headers=server.headers, timeout=30) as client:
        for call in calls.values():  # warm-up, not counted: a new server's first calls are slow
            for i in range(WARM_UP):
                call(client, i)
        for name, call in calls.items():
            times = []
            for i in range(n):
                t0 = time.perf_counter()
                r = call(client, i)
                times.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
            times.sort()
            out[name] = (statistics.median(times) * 1000, times[int(len(times) * 0.99) - 1] * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storages", type=int, default=200)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--interval", type=float, default=2.0)
    args = ap.parse_args()
    c1, c2 = cluster_env("c1"), cluster_env("c2")
    tag = uuid.uuid4().hex[:6]
    prepared = [(c1, *prepare_cluster(c1, f"{tag}a")), (c2, *prepare_cluster(c2, f"{tag}b"))]
    data = Path(tempfile.mkdtemp(prefix="bench-tracker-"))
    # no kept replies (api/reply_cache.py): the question is whether rounds slow the handlers.
    # Kept, the idle server's replies would live for its 30 s heartbeat and the busy one's
    # for its 1 s heartbeat: the ratio would measure how often the cache empties.
    env = {"IMGSTORE_DATA_DIR": str(data), "IMGSTORE_ADMIN_PASSWORD": PASSWORD,
           "IMGSTORE_SECRET_KEY": Fernet.generate_key().decode(), "IMGSTORE_CEPH_TIMEOUT": "3",
           "IMGSTORE_REPLY_CACHE_ENTRIES": "0"}
    os.environ.update(env)
    uuids = asyncio.run(register(Settings(), prepared, args.storages))
    try:
        idle = Tracked({**env, "IMGSTORE_PING_INTERVAL": "0"})
        try:
            lat_idle = latencies(idle, uuids, args.requests)
        finally:
            idle.stop()
        busy = Tracked({**env, "IMGSTORE_PING_INTERVAL": str(args.interval)})
        try:
            rounds = []
            deadline = time.monotonic() + 8 * args.interval + 30
            last = None
            while len(rounds) < 5 and time.monotonic() < deadline:
                time.sleep(args.interval / 2)
                value = busy.round_seconds()
                if value is not None and value != last:
                    rounds.append(value)
                    last = value
                    if len(rounds) == 2:  # the handles are connected: steady rounds from here
                        cpu_from, cpu_since = busy.cpu_seconds(), time.monotonic()
            cpu_to, cpu_until = busy.cpu_seconds(), time.monotonic()
            subprocess.run(["bash", str(ROOT / "scripts/devcluster.sh"), "daemon-stop", "mon", "c2"],
                           check=True, capture_output=True)
            try:
                time.sleep(args.interval)
                lat_busy = latencies(busy, uuids, args.requests)
                down_round = busy.round_seconds()
            finally:
                subprocess.run(["bash", str(ROOT / "scripts/devcluster.sh"), "daemon-start", "mon", "c2"],
                               check=True, capture_output=True)
        finally:
            busy.stop()
        print(f"storages: {args.storages} (half on c1, half on c2), ping interval {args.interval} s, Ceph timeout 3 s")
        if rounds:
            print(f"ping round, all clusters up: median {statistics.median(rounds):.2f} s, max {max(rounds):.2f} s "
                  f"over {len(rounds)} rounds (target < 2 s); each: {', '.join(f'{r:.2f}' for r in rounds)} s "
                  "(the first after start also connects the 200 librados handles)")
        else:
            print("ping round: no round finished within the wait")
        if len(rounds) >= 3:
            span = cpu_until - cpu_since
            server, pinger = ((b - a) / span * 100 for a, b in zip(cpu_from, cpu_to, strict=True))
            print(f"CPU during steady rounds: server {server:.0f} % of a core, its pinger process "
                  f"{pinger:.0f} % (at nice 19)")
        if down_round is not None:
            print(f"ping round with c2's mon down: {down_round:.2f} s (half the storages wait for the timeout)")
        print(f"{'API call':<26}{'idle p50':>10}{'idle p99':>10}{'busy p50':>10}{'busy p99':>10}{'p99 ratio':>11}")
        for name in lat_idle:
            (i50, i99), (b50, b99) = lat_idle[name], lat_busy[name]
            print(f"{name:<26}{i50:>8.1f}ms{i99:>8.1f}ms{b50:>8.1f}ms{b99:>8.1f}ms{b99 / i99:>10.2f}x")
        print("(busy = tracker rounds running and cluster c2's mon stopped; target p99 ratio <= 2x)")
        return 0
    finally:
        for cenv, pool, client, _ in prepared:
            subprocess.run(["ceph", "-c", cenv["CEPH_CONF"], "auth", "del", f"client.{client}"], capture_output=True)
            subprocess.run(["ceph", "-c", cenv["CEPH_CONF"], "osd", "pool", "rm", pool, pool,
                            "--yes-i-really-really-mean-it"], capture_output=True)
        subprocess.run(["rm", "-rf", str(data)])


if __name__ == "__main__":
    sys.exit(main())
