#!/usr/bin/env python3
"""Benchmark: AddCephBackupStorage + DeleteBackupStorage vs the bare SSH floor.

Median wall time, over N runs, of adding a Ceph backup storage on an existing pool and
deleting it again (through a real imgstore server, over HTTP on loopback), printed
beside the median of the floor measured in the same run: one SSH login running
``ceph fsid`` on the same mon host. Target: add + delete <= 3x the floor.

    .venv/bin/python scripts/bench_add.py [--runs 20] [--cluster c1]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncssh
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from _bench import Server, cluster_env  # noqa: E402


async def floor_once(env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    async with asyncssh.connect("127.0.0.1", port=int(env["SSH_PORT"]), username=env["SSH_USER"],
                                password=env["SSH_PASSWORD"], known_hosts=None) as conn:
        r = await conn.run("ceph fsid", check=True)
        assert r.stdout.strip() == env["CEPH_FSID"]
    return time.perf_counter() - t0


def add_delete_once(api: httpx.Client, env: dict[str, str], pool: str) -> float:
    t0 = time.perf_counter()
    params = {"name": "bench", "monUrls": [env["MON_URL"]], "poolName": pool}
    r = api.post("/backup-storage/ceph", json={"params": params})
    assert r.status_code == 200, r.text
    d = api.delete(f"/backup-storage/{r.json()['inventory']['uuid']}")
    assert d.status_code == 200, d.text
    return time.perf_counter() - t0


def row(label: str, median: float, samples: list[float]) -> None:
    """One table row: the median, then the fastest and slowest run, in ms."""
    print(f"{label:<44}{median * 1000:>8.0f}ms{min(samples) * 1000:>8.0f}ms{max(samples) * 1000:>8.0f}ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--cluster", default="c1")
    args = ap.parse_args()
    env = cluster_env(args.cluster)
    ceph = ["ceph", "-c", env["CEPH_CONF"], "--connect-timeout", "10"]
    pool = f"bench-{uuid.uuid4().hex[:8]}"
    subprocess.run([*ceph, "osd", "pool", "create", pool, "8"], check=True, capture_output=True)
    subprocess.run([*ceph, "osd", "pool", "application", "enable", pool, "rbd"], check=True, capture_output=True)
    data = tempfile.mkdtemp(prefix="bench-add-")
    server = Server(Path(data), password="bench", log_level="warning")
    try:
        api = server.start().login()
        add_delete_once(api, env, pool)  # warm-up: imports, first connections
        asyncio.run(floor_once(env))
        adds, floors = [], []
        for _ in range(args.runs):  # interleaved, so both see the same machine
            floors.append(asyncio.run(floor_once(env)))
            adds.append(add_delete_once(api, env, pool))
        f, a = statistics.median(floors), statistics.median(adds)
        print(f"runs: {args.runs} on cluster {args.cluster} (mon {env['CEPH_MON_HOST']}, ssh {env['SSH_PORT']})")
        print(f"{'measure':<44}{'median':>10}{'min':>10}{'max':>10}")
        row("floor: ssh login + ceph fsid", f, floors)
        row("imgstore: AddCephBackupStorage + Delete", a, adds)
        print(f"ratio add+delete / floor: {a / f:.2f}x (target <= 3x)")
        return 0
    finally:
        server.stop()
        subprocess.run([*ceph, "osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it"], capture_output=True)
        subprocess.run(["rm", "-rf", data])


if __name__ == "__main__":
    sys.exit(main())
