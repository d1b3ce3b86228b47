#!/usr/bin/env python3
"""Benchmark of imgstore.ceph.rbd (ImageWriter, iter_image) against the rbd CLI, on a dev cluster.

    .venv/bin/python scripts/bench_rbd_io.py [--cluster c1] [--repeat 3] [--window N]
                                             [--piece BYTES] [--no-tune]

In one run, on a fresh pool of the dev cluster (removed afterwards):

* a 1 GiB random file: ImageWriter (md5+sha512, as the service uses it; and with no
  hashing, the I/O path alone) vs ``rbd import`` of the same file;
* a 4 GiB file that is 90 % zeros (random data in 1 MiB runs at random 1 MiB-aligned
  places, the rest holes): the same comparison;
* those images read back through ``iter_image`` into a file vs ``rbd export`` to a file
  (both leave holes where a whole chunk is zero, as ``rbd export`` does);
* the peak RSS of this process while the 4 GiB image is written with hashing (sampled
  VmRSS every 50 ms), and getrusage's maxrss at the end.

The file is fed to ImageWriter in ``--piece`` bytes at a time (64 KiB: as an HTTP body
arrives). Repetitions are interleaved (CLI, imgstore, CLI, ...) so that load from other
work on the machine hits both sides alike; times are medians, MiB/s are of the logical
size. ``--no-tune`` keeps glibc's malloc arenas and librbd's writearound cache as they
are; by default the process does what the report recommends for the service. Files live
in a temporary directory under /tmp, removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from _bench import ceph, cluster_env  # noqa: E402

from imgstore.ceph import CHUNK_SIZE, WRITE_WINDOW, Cluster, ImageWriter, iter_image, remove_image  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
M_ARENA_MAX = -8


# ---------------------------------------------------------------- setup


def make_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // (16 * MiB)):
            f.write(os.urandom(16 * MiB))


def make_sparse(path: Path, size: int, data_fraction: float) -> None:
    """Holes, with random 1 MiB runs at random aligned places (``data_fraction`` of it)."""
    rng = random.Random(42)
    blocks = size // MiB
    with open(path, "wb") as f:
        f.truncate(size)
        for b in sorted(rng.sample(range(blocks), int(blocks * data_fraction))):
            f.seek(b * MiB)
            f.write(os.urandom(MiB))


def limit_malloc_arenas() -> None:
    """mallopt(M_ARENA_MAX, 2), before any thread starts.

    glibc gives each thread that allocates its own arena and keeps what is freed there;
    with 4 MiB buffers allocated in pool threads (librbd copies what it writes) the RSS
    then holds several windows' worth of memory nobody uses.
    """
    ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 2)


def hash_rates() -> dict[str, float]:
    """MiB/s of md5 and sha512 on one core of this machine, now (256 MiB each)."""
    import hashlib

    block, rates = os.urandom(4 * MiB), {}
    for name in ("md5", "sha512"):
        h, t0 = hashlib.new(name), time.perf_counter()
        for _ in range(64):
            h.update(block)
        rates[name] = 256 / (time.perf_counter() - t0)
    return rates


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s() -> float:
    """CPU seconds of this process and of its finished children (the rbd CLI)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


# ---------------------------------------------------------------- the contenders


async def run_cli(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {err.decode().strip()}")


async def write_with_imagewriter(cluster: Cluster, pool: str, name: str, path: Path, *,
                                 checksums: bool, window: int, piece: int) -> None:
    size = path.stat().st_size
    with open(path, "rb", buffering=0) as f:
        async with ImageWriter(cluster, pool, name, size, window=window, checksums=checksums) as w:
            while data := f.read(piece):
                await w.write(data)


async def export_with_iter_image(cluster: Cluster, pool: str, name: str, path: Path) -> None:
    """Into a file, the writes in a thread; all-zero chunks become holes like rbd export's."""
    loop = asyncio.get_running_loop()
    zero = bytes(CHUNK_SIZE)

    def put(f: Any, chunk: bytes) -> None:
        if len(chunk) == CHUNK_SIZE and chunk == zero:
            f.seek(CHUNK_SIZE, os.SEEK_CUR)
        else:
            f.write(chunk)

    with open(path, "wb", buffering=0) as f:
        pending: asyncio.Future[None] | None = None
        async for chunk in iter_image(cluster, pool, name):
            if pending is not None:
                await pending
            pending = loop.run_in_executor(None, put, f, chunk)
        if pending is not None:
            await pending
        f.truncate(f.tell())


class Contender:
    def __init__(self, method: str, run: Callable[[], Awaitable[None]],
                 cleanup: Callable[[], Awaitable[None]]) -> None:
        self.method, self.run, self.cleanup = method, run, cleanup
        self.walls: list[float] = []
        self.cpus: list[float] = []
        self.rss_peak = 0.0  # MiB, sampled while it runs

    async def once(self) -> None:
        c0, t0 = cpu_s(), time.perf_counter()
        task = asyncio.create_task(self.run())
        while not task.done():
            self.rss_peak = max(self.rss_peak, rss_mib())
            await asyncio.wait([task], timeout=0.05)
        await task
        self.walls.append(time.perf_counter() - t0)
        self.cpus.append(cpu_s() - c0)
        await self.cleanup()


Row = tuple[str, str, float, float, "float | None", float, "float | None"]


async def compare(case: str, mib: float, contenders: list[Contender], repeat: int,
                  rows: list[Row]) -> None:
    for _ in range(repeat):
        for c in contenders:
            await c.once()
    base = statistics.median(contenders[0].walls)
    for i, c in enumerate(contenders):
        t = statistics.median(c.walls)
        rows.append((case, c.method, t, mib / t, None if i == 0 else base / t,
                     statistics.median(c.cpus), None if i == 0 else c.rss_peak))
        print(f"  {case}: {c.method} {t:.2f}s {[round(w, 2) for w in c.walls]}", file=sys.stderr)


# ---------------------------------------------------------------- main


async def bench(args: argparse.Namespace) -> int:
    env = cluster_env(args.cluster)
    conf = env["CEPH_CONF"]
    pool = f"bench-rbdio-{uuid.uuid4().hex[:6]}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-rbd-io-", dir="/tmp"))
    if args.tune:
        limit_malloc_arenas()
    ceph(env, "osd", "pool", "create", pool, "8")
    ceph(env, "osd", "pool", "application", "enable", pool, "rbd")
    cluster = Cluster(env["CEPH_MON_HOST"], "admin", env["CEPH_ADMIN_KEY"], timeout=30)
    await cluster.connect()
    if args.tune:  # imgstore bounds its own window: librbd's writearound cache only adds memory
        cluster.handle.conf_set("rbd_cache", "false")
    load0 = os.getloadavg()[0]
    rates = hash_rates()
    rows: list[Row] = []

    async def rm(name: str) -> None:
        await remove_image(cluster, pool, name, missing_ok=True)

    def writer(path: Path, checksums: bool) -> Callable[[], Awaitable[None]]:
        return lambda: write_with_imagewriter(cluster, pool, "iw", path, checksums=checksums,
                                              window=args.window, piece=args.piece)

    try:
        rand, sparse = tmp / "random.raw", tmp / "sparse.raw"
        print(f"making {rand} and {sparse} ...", file=sys.stderr)
        make_random(rand, args.random_gib * GiB)
        make_sparse(sparse, args.sparse_gib * GiB, 0.10)
        def rbd_import(path: Path) -> Callable[[], Awaitable[None]]:
            return lambda: run_cli("rbd", "-c", conf, "import", "--image-format", "2", str(path),
                                   f"{pool}/cli")

        for label, path in ((f"random {args.random_gib} GiB", rand),
                            (f"sparse 90% zeros {args.sparse_gib} GiB", sparse)):
            hashed = writer(path, True)
            if path is sparse:
                rss_before = rss_mib()
            await compare(label, path.stat().st_size / MiB, [
                Contender("rbd import", rbd_import(path), lambda: rm("cli")),
                Contender("ImageWriter md5+sha512", hashed, lambda: rm("iw")),
                Contender("ImageWriter no hashing", writer(path, False), lambda: rm("iw")),
            ], args.repeat, rows)
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        out = tmp / "export.raw"

        async def unlink() -> None:
            out.unlink(missing_ok=True)

        for label, path in ((f"export random {args.random_gib} GiB", rand),
                            (f"export sparse {args.sparse_gib} GiB", sparse)):
            await write_with_imagewriter(cluster, pool, "src", path, checksums=False,
                                         window=args.window, piece=CHUNK_SIZE)
            await compare(label, path.stat().st_size / MiB, [
                Contender("rbd export", lambda: run_cli("rbd", "-c", conf, "export", f"{pool}/src",
                                                        str(out)), unlink),
                Contender("iter_image -> file", lambda: export_with_iter_image(
                    cluster, pool, "src", out), unlink),
            ], args.repeat, rows)
            await rm("src")
    finally:
        try:
            for name in ("cli", "iw", "src"):
                await rm(name)
        finally:
            await cluster.close()
            ceph(env, "osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it")
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nceph.rbd on {args.cluster}: median of {args.repeat} interleaved runs; window "
          f"{args.window} x {CHUNK_SIZE // MiB} MiB; pieces of {args.piece // 1024} KiB; "
          f"{os.cpu_count()} CPUs; load average {load0:.1f} -> {os.getloadavg()[0]:.1f}; "
          f"tuning {'on (M_ARENA_MAX=2, rbd_cache=false)' if args.tune else 'off'}")
    print("cpu s: this process, or the rbd CLI (the OSD's share is not counted); "
          "RSS: this process's peak VmRSS while it ran, sampled every 50 ms\n")
    print(f"{'case':<26} {'method':<24} {'seconds':>8} {'MiB/s':>7} {'x CLI':>6} {'cpu s':>6} "
          f"{'RSS MiB':>8}")
    for case, method, t, rate, ratio, c, rss in rows:
        shown = "" if ratio is None else f"{ratio:6.2f}"
        print(f"{case:<26} {method:<24} {t:8.2f} {rate:7.0f} {shown:>6} {c:6.1f} "
              f"{'' if rss is None else f'{rss:8.0f}'}")
    print(f"\nRSS of this process before the {args.sparse_gib} GiB writes: {rss_before:.0f} MiB; "
          f"getrusage maxrss after all writes: {maxrss:.0f} MiB")
    slowest = min(rates.values())
    print(f"hashing on one core here: md5 {rates['md5']:.0f} MiB/s, sha512 {rates['sha512']:.0f} MiB/s; "
          f"with one core each, a stream cannot be hashed faster than {slowest:.0f} MiB/s "
          f"({args.random_gib * 1024 / slowest:.1f}s for {args.random_gib} GiB, "
          f"{args.sparse_gib * 1024 / slowest:.1f}s for {args.sparse_gib} GiB, zeros included)")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster", default="c1")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--window", type=int, default=WRITE_WINDOW, help="ImageWriter window (chunks)")
    p.add_argument("--piece", type=int, default=64 * 1024, help="bytes per ImageWriter.write")
    p.add_argument("--random-gib", type=int, default=1)
    p.add_argument("--sparse-gib", type=int, default=4)
    p.add_argument("--no-tune", dest="tune", action="store_false",
                   help="keep glibc's malloc arenas and librbd's writearound cache")
    return asyncio.run(bench(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
