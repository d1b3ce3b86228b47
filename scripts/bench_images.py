#!/usr/bin/env python3
"""Benchmark: images through a real imgstore server vs the rbd CLI, on a dev cluster.

    .venv/bin/python scripts/bench_images.py [--cluster c1] [--repeat 3] [--port N] [--only CASES]

In one run, on a fresh pool of the dev cluster (removed afterwards), with an imgstore
server of its own on loopback (``imgstore serve``, SQLite in a temporary directory),
each case beside the rbd CLI doing the same job, and beside its floor (what the machine
needs for the job with nothing else: a missed target says where the time went):

* upload: AddImage(upload://) then ``curl -T file`` to the upload URL vs ``rbd import``
  of the file, for a 1 GiB random file and a 4 GiB file that is 90 % zeros (random data
  in 1 MiB runs at random 1 MiB-aligned places, the rest holes). Timed from the AddImage
  call to the PUT's answer (the image Ready). Floors: the file's bytes through a loopback
  TCP socket alone (curl sends every byte, zeros included), and ``curl -T`` of the file
  into a sink that only receives (the client's own cost, which rbd import does not pay);
* CalculateImageHash MD5 of each uploaded image vs ``rbd export - | md5sum`` of the
  CLI's copy; its md5Sum must equal ``md5sum`` of the file (the check that the upload
  stored the right bytes). Floor: hashlib md5 of the file from the page cache;
* AddImage ``file://`` of the sparse file vs ``rbd import`` of it (holes are skipped by
  SEEK_DATA/SEEK_HOLE, never read);
* AddImage ``http://`` of the random file from a loopback HTTP server of the bench's own
  (sendfile; the server's setting image_url_allow lets loopback through) vs
  ``curl URL | rbd import -``;
* export: ExportImageFromBackupStorage, then a GET of its imageUrl into a file vs
  ``rbd export`` into a file; both write the file sparse (a 4 MiB piece of zeros is
  skipped, as rbd export skips zero objects). Floor: the bytes through loopback;
* 4 uploads of the random file at once vs 4 ``rbd import`` at once (aggregate);
* the server's RSS: started (logged in; what a restarted server with its storages holds:
  no SSH session yet), idle (the storage added) and the peak during the 4 GiB
  upload (VmRSS sampled every 50 ms, and VmHWM reset through clear_refs just before).

The HTTP clients do C-speed work per byte, like the agents ZStack downloads and uploads
with (curl, wget): the upload is ``curl -T``; the download reads the body with
``http.client.readinto`` into one reused buffer. Before each timed run the page cache
is synced, so neither side pays for the other's write-back. Repetitions are interleaved
(CLI, imgstore, CLI, ...) so load from other work on the machine hits both sides alike;
times are medians. The targets are issue 15's; each row says ok or MISSED.
"""
from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from _bench import Server, cluster_env, free_port  # noqa: E402
from _bench_images_lib import (  # noqa: E402
    Cli,
    CpuUse,
    FileServer,
    GiB,
    MiB,
    RssSampler,
    add_url,
    at_once,
    calculate_md5,
    cpu_use,
    curl_floor,
    download,
    forget_image,
    loopback_floor,
    md5_floor,
    random_file,
    same_file,
    shell,
    sparse_file,
    upload,
)

CASES = ("upload", "file", "http", "export", "hash", "parallel")


# ---------------------------------------------------------------- the run


@dataclass
class Row:
    what: str
    size: int
    minimum: float  # the target: ours / cli at least this
    ours: list[float] = field(default_factory=list)
    cli: list[float] = field(default_factory=list)
    # what the machine needs with nothing else, said beside the row: seconds, by what
    floors: dict[str, list[float]] = field(default_factory=dict)
    cpu_ours: list[CpuUse] = field(default_factory=list)  # where each run's CPU went (cpu_use)
    cpu_cli: list[CpuUse] = field(default_factory=list)

    def rates(self) -> tuple[float, float, float]:
        ours = self.size / MiB / statistics.median(self.ours)
        cli = self.size / MiB / statistics.median(self.cli)
        return ours, cli, ours / cli

    @property
    def ok(self) -> bool:
        return self.rates()[2] >= self.minimum

    def floor(self, what: str, seconds: float) -> None:
        self.floors.setdefault(what, []).append(seconds)


@dataclass
class Run:
    args: argparse.Namespace
    cli: Cli
    api: httpx.Client
    bs: str
    pool: str
    work: Path
    files: dict[str, Path]
    md5: dict[str, str]
    rows: list[Row] = field(default_factory=list)
    images: dict[str, str] = field(default_factory=dict)  # kind -> an image of it, kept for export
    rss: RssSampler | None = None

    def row(self, what: str, size: int, minimum: float) -> Row:
        self.rows.append(Row(what, size, minimum))
        return self.rows[-1]

    def fresh(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:6]}"

    def timed(self, cpus: list[CpuUse], job: Callable[[], float]) -> float:
        """``job()`` (its seconds), and where the machine's CPU went meanwhile."""
        with cpu_use(self.args.server_pid) as cpu:
            took = job()
        cpus.append(cpu)
        return took

    def rbd_import(self, path: Path | str, name: str) -> float:
        os.sync()
        return self.cli.run("rbd", "import", "--no-progress", "--image-format", "2", str(path),
                            f"{self.pool}/{name}")

    def rbd_rm(self, name: str) -> None:
        self.cli.run("rbd", "rm", "--no-progress", f"{self.pool}/{name}")


LABELS = {"random": "1 GiB random", "sparse": "4 GiB, 90 % zeros"}


def uploads_and_hashes(run: Run) -> None:
    """Upload rows (rbd import beside) and CalculateImageHash rows (rbd export | md5sum)."""
    conf = " ".join(run.cli.conf)
    for kind, path in run.files.items():
        size = path.stat().st_size
        up = run.row(f"upload {LABELS[kind]}", size, 0.9 if kind == "random" else 0.8)
        hashed = run.row(f"CalculateImageHash MD5, {kind}", size, 0.9)
        hashed.floor("md5 alone", md5_floor(path)[0])
        up.floor("loopback", loopback_floor(size))
        up.floor("curl -T alone", curl_floor(path))
        for rep in range(run.args.repeat):
            name = run.fresh(f"cli-{kind}")
            up.cli.append(run.timed(up.cpu_cli, functools.partial(run.rbd_import, path, name)))
            hashed.cli.append(shell(f"rbd {conf} export --no-progress {run.pool}/{name} - | md5sum"))
            run.rbd_rm(name)
            os.sync()
            last = rep == run.args.repeat - 1
            with cpu_use(server_pid(run)) as cpu:
                if kind == "sparse" and last:
                    assert run.api is not None
                    with RssSampler(server_pid(run)) as run.rss:
                        took, image, _ = upload(run.api, run.bs, path, f"bench-{kind}")
                else:
                    took, image, _ = upload(run.api, run.bs, path, f"bench-{kind}")
            up.ours.append(took)
            up.cpu_ours.append(cpu)
            took, md5 = calculate_md5(run.api, run.bs, image)
            if md5 != run.md5[kind]:
                raise RuntimeError(f"{kind}: CalculateImageHash says {md5}, md5sum of the file {run.md5[kind]}")
            hashed.ours.append(took)
            if last:
                run.images[kind] = image
            else:
                forget_image(run.api, image)
            print(f"  {kind} #{rep + 1}: rbd import {up.cli[-1]:.2f}s, upload {up.ours[-1]:.2f}s; "
                  f"rbd export|md5sum {hashed.cli[-1]:.2f}s, CalculateImageHash {hashed.ours[-1]:.2f}s",
                  flush=True)


def from_file(run: Run) -> None:
    path = run.files["sparse"]
    row = run.row(f"AddImage file:// {LABELS['sparse']}", path.stat().st_size, 1.5)
    for rep in range(run.args.repeat):
        name = run.fresh("cli-file")
        row.cli.append(run.timed(row.cpu_cli, functools.partial(run.rbd_import, path, name)))
        run.rbd_rm(name)
        os.sync()
        with cpu_use(run.args.server_pid) as cpu:
            took, image = add_url(run.api, run.bs, f"file://{path}", run.fresh("file"))
        row.ours.append(took)
        row.cpu_ours.append(cpu)
        forget_image(run.api, image)
        print(f"  file:// #{rep + 1}: rbd import {row.cli[-1]:.2f}s, imgstore {took:.2f}s", flush=True)


def from_http(run: Run) -> None:
    path = run.files["random"]
    row = run.row(f"AddImage http:// {LABELS['random']}", path.stat().st_size, 0.9)
    source = FileServer(path.parent)
    try:
        url = f"{source.url}/{path.name}"
        conf = " ".join(run.cli.conf)
        for rep in range(run.args.repeat):
            name = run.fresh("cli-http")
            os.sync()
            row.cli.append(run.timed(row.cpu_cli, functools.partial(shell, (
                f"curl -sSf {url} | rbd {conf} import --no-progress --image-format 2 - {run.pool}/{name}"))))
            run.rbd_rm(name)
            os.sync()
            with cpu_use(run.args.server_pid) as cpu:
                took, image = add_url(run.api, run.bs, url, run.fresh("http"))
            row.ours.append(took)
            row.cpu_ours.append(cpu)
            forget_image(run.api, image)
            print(f"  http:// #{rep + 1}: curl|rbd import {row.cli[-1]:.2f}s, imgstore {took:.2f}s", flush=True)
    finally:
        source.close()


def exports(run: Run) -> None:
    for kind, path in run.files.items():
        image = run.images.get(kind) or upload(run.api, run.bs, path, f"bench-{kind}")[1]
        run.images[kind] = image
        row = run.row(f"export {LABELS[kind]}", path.stat().st_size, 0.9)
        row.floor("loopback", loopback_floor(path.stat().st_size))
        r = run.api.put(f"/backup-storage/{run.bs}/actions",
                        json={"exportImageFromBackupStorage": {"imageUuid": image}})
        r.raise_for_status()
        url = r.json()["imageUrl"]
        for rep in range(run.args.repeat):
            theirs, ours = run.work / f"rbd-export-{kind}.raw", run.work / f"http-export-{kind}.raw"
            os.sync()
            row.cli.append(run.timed(row.cpu_cli, functools.partial(
                run.cli.run, "rbd", "export", "--no-progress", f"{run.pool}/{image}", str(theirs))))
            theirs.unlink()
            os.sync()
            row.ours.append(run.timed(row.cpu_ours, functools.partial(download, url, ours)))
            if rep == 0 and not same_file(ours, path):
                raise RuntimeError(f"the exported {kind} image differs from its source")
            ours.unlink()
            print(f"  export {kind} #{rep + 1}: rbd export {row.cli[-1]:.2f}s, imgstore {row.ours[-1]:.2f}s",
                  flush=True)


def parallel(run: Run) -> None:
    path = run.files["random"]
    row = run.row("4 uploads at once, 1 GiB random each", 4 * path.stat().st_size, 0.9)
    for rep in range(run.args.repeat):
        names = [run.fresh("cli-par") for _ in range(4)]
        os.sync()
        row.cli.append(run.timed(row.cpu_cli, functools.partial(
            at_once, [functools.partial(run.rbd_import, path, n) for n in names])))
        for n in names:
            run.rbd_rm(n)
        os.sync()
        made: list[str] = []
        row.ours.append(run.timed(row.cpu_ours, functools.partial(
            at_once, [lambda i=i, made=made: made.append(upload(run.api, run.bs, path, f"par-{i}")[1])
                      for i in range(4)])))
        for image in made:
            forget_image(run.api, image)
        print(f"  4 at once #{rep + 1}: rbd import {row.cli[-1]:.2f}s, imgstore {row.ours[-1]:.2f}s", flush=True)


def server_pid(run: Run) -> int:
    return run.args.server_pid


def measure(args: argparse.Namespace) -> int:
    env = cluster_env(args.cluster)
    cli = Cli(env)
    pool = f"bench-img-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="bench-images-"))
    # Direct deletion: an image's bits go with it, the next run starts from an empty pool
    server = Server(work / "server", port=args.port or free_port(), password="bench", log_level="warning",
                    env={"IMGSTORE_IMAGE_DELETION_POLICY": "Direct", "IMGSTORE_FILE_ALLOW_DIRS": str(work),
                         "IMGSTORE_IMAGE_URL_ALLOW": "127.0.0.1"})
    cli.run("ceph", "osd", "pool", "create", pool, "32")
    cli.run("ceph", "osd", "pool", "application", "enable", pool, "rbd")
    api: httpx.Client | None = None
    bs: str | None = None
    try:
        print(f"making the files in {work} ...", flush=True)
        files = {"random": random_file(work / "random.raw", int(args.random_gib * GiB)),
                 "sparse": sparse_file(work / "sparse.raw", int(args.sparse_gib * GiB))}
        md5 = {k: md5_floor(p)[1] for k, p in files.items()}
        api = server.start().login(timeout=600)
        assert server.proc is not None
        time.sleep(2)
        started_kib = RssSampler(server.proc.pid).status("VmRSS")
        r = api.post("/backup-storage/ceph", json={"params": {"name": "bench", "monUrls": [env["MON_URL"]],
                                                              "poolName": pool}})
        r.raise_for_status()
        bs = r.json()["inventory"]["uuid"]
        assert server.proc is not None
        args.server_pid = server.proc.pid
        time.sleep(2)
        idle_kib = RssSampler(server.proc.pid).status("VmRSS")
        run = Run(args, cli, api, bs, pool, work, files, md5)
        steps: dict[str, Callable[[Run], None]] = {"upload": uploads_and_hashes, "file": from_file,
                                                    "http": from_http, "export": exports, "parallel": parallel}
        for case in args.only.split(","):
            steps[case if case != "hash" else "upload"](run)
        report(args, env, run, idle_kib, started_kib)
        rss_ok = idle_kib <= 130 * 1024 and (run.rss is None or peak_kib(run.rss) <= 150 * 1024)
        return 0 if all(r.ok for r in run.rows) and rss_ok else 1
    finally:
        if api is not None:
            if bs is not None:
                api.delete(f"/backup-storage/{bs}")  # removes the storage's cephx key too
            api.close()
        server.stop()
        subprocess.run(["ceph", *cli.conf, "osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it"],
                       capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def peak_kib(rss: RssSampler) -> int:
    return max(rss.peak_kib, rss.hwm_kib)


def cpu_line(row: Row) -> str:
    """The machine's CPU seconds per job, who used them, and the ratio they allow: with
    both jobs using the cores as well as the rbd CLI does, at most the CLI's CPU over
    imgstore's; with every core busy all the time, at most the CLI's time over imgstore's
    CPU per core. The curl that sends the upload runs on these cores here; in a real
    deployment it runs on another machine."""
    def med(uses: list[CpuUse], part: str) -> float:
        return float(statistics.median(getattr(u, part) for u in uses))

    cores = os.cpu_count() or 1
    ours_m, cli_m = med(row.cpu_ours, "machine"), med(row.cpu_cli, "machine")
    cli_time = statistics.median(row.cli)
    return (f"{'':<4}machine CPU s: imgstore {ours_m:.2f} (server {med(row.cpu_ours, 'server'):.2f}, child "
            f"processes {med(row.cpu_ours, 'tools'):.2f}), rbd CLI {cli_m:.2f} (its processes "
            f"{med(row.cpu_cli, 'tools'):.2f}); "
            f"the ratio cannot pass {cli_m / ours_m:.2f}x at the CLI's use of the cores "
            f"({cli_m / cli_time / cores:.0%}), {cli_time / (ours_m / cores):.2f}x with them all busy")


def report(args: argparse.Namespace, env: dict[str, str], run: Run, idle_kib: int, started_kib: int) -> None:
    load = os.getloadavg()
    print()
    print(f"cluster {args.cluster} (mon {env['CEPH_MON_HOST']}), {os.cpu_count()} CPUs, load "
          f"{load[0]:.1f}/{load[1]:.1f}, medians of {args.repeat}")
    print(f"{'':<40}{'imgstore':>11}{'rbd CLI':>11}{'ratio':>8}  {'target':<9}{'':<7}floor (the job alone)")
    for row in run.rows:
        ours, cli, ratio = row.rates()
        floor = ", ".join(f"{what} {row.size / MiB / statistics.median(took):.0f} MiB/s"
                          for what, took in row.floors.items())
        print(f"{row.what:<40}{ours:>6.0f} MiB/s{cli:>6.0f} MiB/s{ratio:>7.2f}x  >= {row.minimum:.2f}x  "
              f"{'ok' if row.ok else 'MISSED':<7}{floor}")
        if row.cpu_ours and row.cpu_cli:
            print(cpu_line(row))
    print(f"{'server RSS started (logged in, no add)':<40}{started_kib / 1024:>6.0f} MiB")
    idle_ok = "ok" if idle_kib <= 130 * 1024 else "MISSED"
    print(f"{'server RSS idle':<40}{idle_kib / 1024:>6.0f} MiB{'':>19}  <= 130 MiB {idle_ok}")
    if run.rss is not None:
        peak = peak_kib(run.rss) / 1024
        print(f"{'server RSS peak, 4 GiB upload':<40}{peak:>6.0f} MiB{'':>19}  <= 150 MiB "
              f"{'ok' if peak <= 150 else 'MISSED'}  (sampled {run.rss.peak_kib / 1024:.0f}, "
              f"VmHWM {run.rss.hwm_kib / 1024:.0f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cluster", default="c1")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--port", type=int, default=0, help="the server's loopback port (default: a free one)")
    ap.add_argument("--only", default=",".join(c for c in CASES if c != "hash"),
                    help=f"comma-separated cases of {', '.join(CASES)} (hash comes with upload)")
    ap.add_argument("--random-gib", type=float, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--sparse-gib", type=float, default=4, help=argparse.SUPPRESS)
    return measure(ap.parse_args())


if __name__ == "__main__":
    sys.exit(main())
