#!/usr/bin/env python3
"""Benchmark: BackupStorageMigrateImage vs ``rbd export - | rbd import -`` between two clusters.

One image on a storage of cluster A is copied to a storage of cluster B, by imgstore
(librbd to librbd in its process, holes skipped, each object of the copy checksummed by its OSD) and by
the CLI pipe ZStack's agent runs (``rbd export pool/img - | rbd import - pool/img``, no
verification), interleaved, median of N runs each. Two images: all data, and thin (a
little data, the rest a hole). Target: imgstore >= 0.9x the pipe's throughput.

Beside them, in the same rounds, the floors of imgstore's copy, run in this process on
the same two clusters without the server (no job, database or progress): the copy
alone (the service's ``migrate.stream``, no verification, what the pipe
does) and the copy with the check the service runs behind its writer (the OSDs'
checksums). The gap between the pipe and the first is the copy's; between the two,
the verification's; between the second and imgstore, the service's. The CPU column is
the whole machine's (``/proc/stat``: both clusters' OSDs, the server, the pipe), and
that of the destination's OSD alone (where the check's cost lands: it reads the copy).

The copy's writes ask the destination's OSD to keep their data cached, so the check
reads it from memory: that needs a cache of Ceph's default size (clusters made with
``DEVCLUSTER_OSD_MEMORY=ceph``); the CI's clusters have 128 MiB. The header says which.

    .venv/bin/python scripts/bench_migrate.py [--runs 3] [--size-mib 256] [--src c1] [--dst c2] [--pg-num 8]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from _bench import Api, Server, ceph, cluster_env  # noqa: E402
from _bench_images_lib import machine_cpu, process_cpu  # noqa: E402

from imgstore import ceph as rados_ceph  # noqa: E402
from imgstore.services.images.migrate import new_check, stream  # noqa: E402

MiB = 1 << 20


def write_image(path: Path, data_mib: int, hole_mib: int) -> None:
    block = hashlib.sha512(b"bench").digest() * (MiB // 64)
    with open(path, "wb") as f:
        for i in range(data_mib):
            f.write(hashlib.sha512(i.to_bytes(8, "big")).digest() + block[64:])
        f.truncate((data_mib + hole_mib) * MiB)


def pool_on(env: dict[str, str], pg_num: int) -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    ceph(env, "osd", "pool", "create", name, str(pg_num))
    ceph(env, "osd", "pool", "application", "enable", name, "rbd")
    return name


def arguments(doc: str, a: str, b: str) -> argparse.Namespace:
    """``--runs``, ``--size-mib`` and the two dev clusters, named ``--<a>`` and ``--<b>``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument(f"--{a}", default="c1")
    ap.add_argument(f"--{b}", default="c2")
    ap.add_argument("--pg-num", type=int, default=8, help="placement groups of each bench pool")
    return ap.parse_args()


@dataclass
class TwoStorages:
    """A started server holding a Ceph storage on each of two dev clusters."""

    api: Api
    uuids: tuple[str, str]
    envs: tuple[dict[str, str], dict[str, str]]
    pools: tuple[str, str]


@contextmanager
def two_storages(server: Server, cluster_a: str, cluster_b: str, pg_num: int = 8) -> Iterator[TwoStorages]:
    """``server`` started with a storage "a" on ``cluster_a`` and "b" on ``cluster_b``, each
    on a new pool; at the end the server stops and the pools go."""
    envs = cluster_env(cluster_a), cluster_env(cluster_b)
    pools = pool_on(envs[0], pg_num), pool_on(envs[1], pg_num)
    try:
        api = server.start().login()
        urls = envs[0]["MON_URL"], envs[1]["MON_URL"].replace("@127.0.0.1:", "@localhost:")  # hostnames unique
        uuids = [api.post("/backup-storage/ceph", json={"params": {"name": name, "monUrls": [url], "poolName": pool}}
                          ).json()["inventory"]["uuid"] for name, url, pool in zip("ab", urls, pools, strict=True)]
        yield TwoStorages(api, (uuids[0], uuids[1]), envs, pools)
    finally:
        server.stop()
        for env, pool in zip(envs, pools, strict=True):
            ceph(env, "osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it")


def pipe_once(src: dict[str, str], src_pool: str, dst: dict[str, str], dst_pool: str, name: str) -> float:
    target = f"{dst_pool}/pipe-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    subprocess.run(f"rbd -c {src['CEPH_CONF']} export {src_pool}/{name} - | "
                   f"rbd -c {dst['CEPH_CONF']} import - {target}", shell=True, check=True, capture_output=True)
    took = time.perf_counter() - t0
    subprocess.run(["rbd", "-c", dst["CEPH_CONF"], "rm", target], check=True, capture_output=True)
    return took


def migrate_once(api: Api, image: str, src: str, dst: str) -> float:
    t0 = time.perf_counter()
    r = api.put(f"/backup-storage/images/{image}/actions", headers={"Prefer": "respond-async"},
                json={"backupStorageMigrateImage": {"srcBackupStorageUuid": src, "dstBackupStorageUuid": dst}})
    done = api.wait_job(r, timeout=1800, poll=0.05)  # (overshoots the end by 25 ms on average)
    took = time.perf_counter() - t0
    assert done.status_code == 200, done.text
    d = api.delete(f"/images/{image}", params={"backupStorageUuids": dst})  # Direct: the copy goes
    assert d.status_code == 200, d.text
    return took


def osd_memory(env: dict[str, str]) -> str:
    """How the cluster's OSD sizes its cache (the check reads the copy from it)."""
    def get(option: str) -> str:
        return str(json.loads(ceph(env, "tell", "osd.0", "config", "get", option))[option])
    target = int(get("osd_memory_target"))
    if get("bluestore_cache_autotune") == "true":
        return f"cache autotuned within osd_memory_target {target / 2**30:.2f} GiB"
    return f"cache fixed at {int(get('bluestore_cache_size')) >> 20} MiB"


def osd_cpu(env: dict[str, str]) -> float:
    """CPU-seconds the dev cluster's OSD processes have used."""
    pids = subprocess.run(["pgrep", "-f", f"ceph-osd .*{env['CEPH_DIR']}/"], capture_output=True,
                          text=True).stdout.split()
    total = 0.0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            total += process_cpu(int(pid))
    return total


async def copy_once(src: rados_ceph.Cluster, src_pool: str, dst: rados_ceph.Cluster, dst_pool: str,
                    name: str, *, verify: bool) -> float:
    """The service's copy of ``src_pool/name`` (``migrate.stream``) without the server, with
    or without the check it runs behind its writer; the copy is removed after."""
    target = f"floor-{uuid.uuid4().hex[:8]}"
    size = await rados_ceph.image_size(src, src_pool, name)
    t0 = time.perf_counter()
    check = new_check(dst, dst_pool, target) if verify else None
    try:
        await stream((src, src_pool, name), (dst, dst_pool, target), size, check)
        if check is not None:
            await check.finish(size)
            assert check.mismatch is None, check.mismatch
    finally:
        if check is not None:
            await check.close()
    took = time.perf_counter() - t0
    await rados_ceph.remove_image(dst, dst_pool, target)
    return took


def admin_cluster(env: dict[str, str]) -> rados_ceph.Cluster:
    return rados_ceph.Cluster(env["CEPH_MON_HOST"], "admin", env["CEPH_ADMIN_KEY"])


def add(api: Api, path: Path, bs: str) -> str:
    r = api.post("/images", json={"params": {"name": path.name, "url": f"file://{path}", "format": "raw",
                                             "backupStorageUuids": [bs]}})
    done = api.wait_job(r, timeout=1800) if r.status_code == 202 else r
    assert done.status_code == 200, done.text
    return done.json()["inventory"]["uuid"]


def main() -> int:
    args = arguments(__doc__ or "", "src", "dst")
    work = Path(tempfile.mkdtemp(prefix="bench-migrate-"))
    files = work / "files"
    files.mkdir()
    server = Server(work / "data", password="bench", log_level="warning",
                    env={"IMGSTORE_FILE_ALLOW_DIRS": str(files), "IMGSTORE_IMAGE_DELETION_POLICY": "Direct"})
    try:
        with two_storages(server, args.src, args.dst, args.pg_num) as two:
            return measure(args, files, two)
    finally:
        subprocess.run(["rm", "-rf", str(work)])


def measure(args: argparse.Namespace, files: Path, two: TwoStorages) -> int:
    """The two images, each copied by the pipe, by imgstore and by the two floors,
    interleaved; the table."""
    return asyncio.run(_measure(args, files, two))


async def _measure(args: argparse.Namespace, files: Path, two: TwoStorages) -> int:
    api, (src, dst), (src_env, dst_env), (src_pool, dst_pool) = two.api, two.uuids, two.envs, two.pools
    clusters = admin_cluster(src_env), admin_cluster(dst_env)
    for cluster in clusters:
        await cluster.connect()
    print(f"runs: {args.runs}, {args.src} -> {args.dst}, interleaved; MiB/s of the image's size (x the pipe), "
          "CPU-s of the whole machine a copy (medians)")
    for name, env in ((args.src, src_env), (args.dst, dst_env)):
        print(f"  {name}'s OSD: {osd_memory(env)}, pools of {args.pg_num} PGs")
    ways = ("pipe", "imgstore", "floor: copy alone", "floor: copy + check")
    try:
        for label, data, hole in (("data", args.size_mib, 0), ("thin (1/16 data)", args.size_mib // 16,
                                                                args.size_mib - args.size_mib // 16)):
            path = files / f"{label.split()[0]}.raw"
            write_image(path, data, hole)
            image = await asyncio.to_thread(add, api, path, src)
            await asyncio.to_thread(migrate_once, api, image, src, dst)  # warm-up: handles, first reads
            runs: dict[str, list[tuple[float, float, float]]] = {way: [] for way in ways}
            for _ in range(args.runs):
                for way in ways:
                    cpu, osd = machine_cpu(), osd_cpu(dst_env)
                    if way == "pipe":
                        took = await asyncio.to_thread(pipe_once, src_env, src_pool, dst_env, dst_pool, image)
                    elif way == "imgstore":
                        took = await asyncio.to_thread(migrate_once, api, image, src, dst)
                    else:
                        took = await copy_once(clusters[0], src_pool, clusters[1], dst_pool, image,
                                               verify=way.endswith("check"))
                    runs[way].append((took, machine_cpu() - cpu, osd_cpu(dst_env) - osd))
            size = data + hole
            pipe = size / statistics.median(t for t, _, _ in runs["pipe"])
            print(f"{label} {size} MiB")
            for way in ways:
                rate = size / statistics.median(t for t, _, _ in runs[way])
                cpu = statistics.median(c for _, c, _ in runs[way])
                osd = statistics.median(o for _, _, o in runs[way])
                print(f"  {way:<22}{rate:>8.0f} MiB/s {rate / pipe:>6.2f}x {cpu:>7.2f} CPU-s, "
                      f"{osd:.2f} of them the destination's OSD")
    finally:
        for cluster in clusters:
            await cluster.close()
    return 0

if __name__ == "__main__":
    sys.exit(main())
