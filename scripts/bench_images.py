#!/usr/bin/env python3
"""Benchmark: images through a real imgstore server vs the rbd CLI, on a dev cluster.

    .venv/bin/python scripts/bench_images.py [--cluster c1] [--repeat 3] [--malloc-arena-max N]

In one run, on a fresh pool of the dev cluster (removed afterwards), with an imgstore
server of its own on loopback (``imgstore serve``, SQLite in a temporary directory):

* upload: AddImage(upload://) then ``curl -T file`` to the upload URL vs ``rbd import``
  of the same file, for a 1 GiB random file and a 4 GiB file that is 90 % zeros (random
  data in 1 MiB runs at random 1 MiB-aligned places, the rest holes). Throughput is of
  the logical size, from the AddImage call to the PUT's answer (the image Ready). The
  image's md5Sum and sha512Sum must equal ``md5sum``/``sha512sum`` of the file;
* the hash floor: the time of ``md5sum`` and of ``sha512sum`` of each file, printed next
  to ``rbd import``: imgstore computes both of every byte while it streams (the issue
  asks for it), so on this CPU an upload cannot be faster than the slower of the two;
* the server's peak RSS during the 4 GiB upload: VmRSS sampled every 50 ms, and VmHWM
  (reset through /proc/<pid>/clear_refs just before);
* the loopback floor: the time to move each file's logical size through a TCP socket on
  loopback with nothing else (an HTTP export sends every byte, holes included);
* export: ExportImageFromBackupStorage, then a GET of its imageUrl into a file vs
  ``rbd export`` of the same image into a file. Both write the file sparse (a 4 MiB
  piece of zeros is skipped, as rbd export skips zero objects: the files are alike).

The HTTP clients do C-speed work per byte, like the agents ZStack downloads and uploads
with (curl, wget): the upload is ``curl -T``; the download reads the body with
``http.client.readinto`` into one reused buffer (curl cannot write a sparse file, and
``curl | dd conv=sparse`` adds a pipe, two copies and a process on a 2-core box). An
httpx client, as before, parsed every piece in Python: about a core of the two, so the
bench measured the client as much as the server. Before each timed run the page cache
is synced, so neither side pays for the other's write-back.

Repetitions are interleaved (CLI, imgstore, CLI, ...) so load from other work on the
machine hits both sides alike; times are medians. Without the image upload API
(AddImage answering 404), the upload rows are skipped and the exported images are
written with ``rbd import`` and adopted by AddCephBackupStorage(importImages=true).
Targets: random upload >= 0.9x rbd import; sparse upload faster than rbd import;
export >= 0.9x rbd export; RSS < 200 MiB.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from _bench import Server, cluster_env  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30


# ---------------------------------------------------------------- setup


def random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        for _ in range(size // (16 * MiB)):
            f.write(os.urandom(16 * MiB))
        f.write(os.urandom(size % (16 * MiB)))
    return path


def sparse_file(path: Path, size: int, data_fraction: float = 0.1, seed: int = 4) -> Path:
    """``size`` bytes, ``data_fraction`` of them random in 1 MiB runs, the rest holes."""
    slots = size // MiB
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for slot in sorted(rng.sample(range(slots), int(slots * data_fraction))):
            os.pwrite(f.fileno(), os.urandom(MiB), slot * MiB)
    return path


class Cli:
    def __init__(self, env: dict[str, str]) -> None:
        self.conf = ["-c", env["CEPH_CONF"]]

    def run(self, tool: str, *args: str, timeout: float = 600) -> float:
        """Run ``rbd``/``ceph`` and return its wall time; raise if it failed."""
        t0 = time.perf_counter()
        out = subprocess.run([tool, *self.conf, *args], capture_output=True, text=True, timeout=timeout)
        took = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)}: {out.stderr.strip()[-500:]}")
        return took


class RssSampler:
    """Peak VmRSS of a process, sampled every 50 ms while in the block; VmHWM too."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def status(self, field_name: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_kib = max(self.peak_kib, self.status("VmRSS"))

    def __enter__(self) -> RssSampler:
        try:  # reset VmHWM to the current RSS (Linux >= 4.0)
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            pass
        self.before_kib = self.status("VmRSS")
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.hwm_kib = self.status("VmHWM")


# ---------------------------------------------------------------- the measured operations


def file_pieces(path: Path, piece: int) -> Iterator[bytes]:
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(piece):
            yield chunk


def upload(api: httpx.Client, bs: str, path: Path, name: str) -> tuple[float, str, dict]:
    """AddImage(upload://) + ``curl -T`` of the file to the upload URL: (seconds, image
    uuid, the image's inventory once Ready)."""
    size = path.stat().st_size
    t0 = time.perf_counter()
    r = api.post("/images", json={"params": {"name": name, "url": "upload://", "backupStorageUuids": [bs],
                                             "format": "raw"}})
    inv = job_result(r)["inventory"]  # AddImage is a job by nature: it answers at once with the upload URL
    put = subprocess.run(
        ["curl", "-sS", "-T", str(path), "-H", f"X-Image-Size: {size}", "-H", "Expect:",
         "-H", "Content-Type: application/octet-stream", "-w", "\\n%{http_code}",
         inv["backupStorageRefs"][0]["uploadUrl"]], capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - t0
    body, _, code = put.stdout.rpartition("\n")
    if put.returncode != 0 or code != "200" or not json.loads(body).get("completed"):
        raise RuntimeError(f"upload of {path.name} failed: {code} {put.stderr[-300:]} {body[:500]}")
    return took, inv["uuid"], json.loads(body)["inventory"]


def job_result(r: httpx.Response) -> dict:
    """The body of a finished API: the reply itself, or its job's once it is done."""
    r.raise_for_status()
    while r.status_code == 202:
        time.sleep(0.05)
        r = httpx.get(r.json()["location"] if "location" in r.json() else str(r.url), timeout=60)
    if r.status_code != 200:
        raise RuntimeError(f"API failed: {r.status_code} {r.text[:500]}")
    return r.json()


def forget_image(api: httpx.Client, image_uuid: str) -> None:
    api.delete(f"/images/{image_uuid}")  # Direct: the bits go at once
    api.put(f"/images/{image_uuid}/actions", json={"expungeImage": {}})


def download(url: str, dest: Path, piece: int = 4 * MiB) -> float:
    """GET ``url`` into ``dest``, written sparse as rbd export writes it: seconds.

    A lean client, C speed per byte: ``http.client`` reads the body straight into one
    reused ``piece``-sized buffer (``readinto``: one copy out of the socket, as curl
    does), one memcmp against zeros per piece, and a piece of zeros is skipped instead
    of written (rbd export skips whole zero objects: 4 MiB pieces make the same file).
    """
    parts = urllib.parse.urlsplit(url)
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        r = conn.getresponse()
        if r.status != 200:
            raise RuntimeError(f"GET {url}: {r.status} {r.read()[:300]!r}")
        size = int(r.headers["content-length"])
        buf, zero = bytearray(piece), bytes(piece)
        view = memoryview(buf)
        with open(dest, "wb", buffering=0) as f:
            pos = 0
            while pos < size:
                want, got = min(piece, size - pos), 0
                while got < want:
                    n = r.readinto(view[got:want])
                    if not n:
                        raise RuntimeError(f"GET {url}: the body ended at byte {pos + got} of {size}")
                    got += n
                if (buf != zero) if got == piece else (view[:got] != zero[:got]):
                    os.pwrite(f.fileno(), view[:got], pos)
                pos += got
            f.truncate(size)
    finally:
        conn.close()
    return time.perf_counter() - t0


def hash_floor(path: Path) -> dict[str, float | str]:
    """What hashing every byte costs on this CPU (OpenSSL through hashlib, as the server
    does; the file read from the page cache): md5 alone, sha512 alone, both at once in
    two threads. An upload that computes both while it streams cannot beat "both"."""
    for _ in file_pieces(path, 16 * MiB):  # into the page cache first (a hole read once costs a page)
        pass

    def run(*names: str) -> tuple[float, list[str]]:
        hashes = [hashlib.new(n) for n in names]
        def feed(h: hashlib._Hash) -> None:
            buf = bytearray(4 * MiB)
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    h.update(memoryview(buf)[:n])
        threads = [threading.Thread(target=feed, args=(h,)) for h in hashes]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0, [h.hexdigest() for h in hashes]
    md5_s, (md5,) = run("md5")
    sha_s, (sha512,) = run("sha512")
    both_s, _ = run("md5", "sha512")
    cli = {tool: subprocess.run([tool, str(path)], capture_output=True, text=True, check=True).stdout.split()[0]
           for tool in ("md5sum", "sha512sum")}
    if (cli["md5sum"], cli["sha512sum"]) != (md5, sha512):
        raise RuntimeError(f"hashlib and md5sum/sha512sum disagree on {path}")
    return {"md5": md5_s, "sha512": sha_s, "both": both_s, "md5sum": md5, "sha512sum": sha512}


def loopback_floor(size: int, piece: int = 4 * MiB) -> float:
    """Seconds to move ``size`` bytes of zeros through a loopback TCP socket into a reused
    buffer, with nothing else: the floor of any HTTP export of an image of that logical
    size on this machine (rbd export moves no byte of a hole at all)."""
    server = socket.create_server(("127.0.0.1", 0))
    zero = bytes(piece)

    def send() -> None:
        conn, _ = server.accept()
        with conn:
            left = size
            while left > 0:
                conn.sendall(memoryview(zero)[:min(piece, left)])
                left -= piece

    sender = threading.Thread(target=send)
    sender.start()
    buf = bytearray(piece)
    view = memoryview(buf)
    t0 = time.perf_counter()
    with socket.create_connection(server.getsockname()) as c:
        got = 0
        while got < size:
            n = c.recv_into(view)
            if not n:
                break
            got += n
    took = time.perf_counter() - t0
    sender.join()
    server.close()
    return took


def same_file(a: Path, b: Path) -> bool:
    def digest(p: Path) -> str:
        h = hashlib.sha256()
        for piece in file_pieces(p, 16 * MiB):
            h.update(piece)
        return h.hexdigest()
    return a.stat().st_size == b.stat().st_size and digest(a) == digest(b)


# ---------------------------------------------------------------- the run


@dataclass
class Row:
    what: str
    size: int
    ours: list[float] = field(default_factory=list)
    cli: list[float] = field(default_factory=list)
    target: str = ""
    passes: Callable[[float], bool] = lambda ratio: True

    def rates(self) -> tuple[float, float, float]:
        ours = self.size / MiB / statistics.median(self.ours)
        cli = self.size / MiB / statistics.median(self.cli)
        return ours, cli, ours / cli


def measure(args: argparse.Namespace) -> int:
    env = cluster_env(args.cluster)
    cli = Cli(env)
    pool = f"bench-img-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="bench-images-"))
    # Direct deletion: an image's bits go with it, the next run starts from an empty pool
    server = Server(work / "server", password="bench", log_level="warning",
                    env={"IMGSTORE_IMAGE_DELETION_POLICY": "Direct"})
    if args.malloc_arena_max:
        server.env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
    cli.run("ceph", "osd", "pool", "create", pool, "32")
    cli.run("ceph", "osd", "pool", "application", "enable", pool, "rbd")
    api: httpx.Client | None = None
    bs: str | None = None
    try:
        print(f"making the files in {work} ...", flush=True)
        files = {"random": random_file(work / "random.raw", args.random_gib * GiB),
                 "sparse": sparse_file(work / "sparse.raw", args.sparse_gib * GiB)}
        bounds = {k: hash_floor(p) for k, p in files.items()}
        api = server.start().login(timeout=600)
        can_upload = api.get("/images", params={"limit": 1}).status_code == 200
        sources: dict[str, str] = {}
        if not can_upload:  # export only: images written by rbd import, adopted by importImages
            for kind, path in files.items():
                sources[kind] = uuid.uuid4().hex
                cli.run("rbd", "import", "--image-format", "2", str(path), f"{pool}/{sources[kind]}")
        r = api.post("/backup-storage/ceph", json={"params": {
            "name": "bench", "monUrls": [env["MON_URL"]], "poolName": pool, "importImages": not can_upload}})
        r.raise_for_status()
        bs = r.json()["inventory"]["uuid"]
        assert server.proc is not None
        started_kib = RssSampler(server.proc.pid).status("VmRSS")

        labels = {"random": f"{args.random_gib} GiB random", "sparse": f"{args.sparse_gib} GiB, 90 % zeros"}
        rows: list[Row] = []
        rss: RssSampler | None = None
        if can_upload and args.export_only:  # the images to export, uploaded once, not timed
            for kind, path in files.items():
                sources[kind] = upload(api, bs, path, f"bench-{kind}")[1]
        elif can_upload:
            ups = {k: Row(f"upload {labels[k]}", p.stat().st_size) for k, p in files.items()}
            ups["random"].target, ups["random"].passes = ">= 0.90x", lambda x: x >= 0.9
            ups["sparse"].target, ups["sparse"].passes = "> 1.00x", lambda x: x > 1.0
            for rep in range(args.repeat):
                for kind, path in files.items():
                    name = f"cli-{kind}-{rep}"
                    os.sync()
                    ups[kind].cli.append(cli.run("rbd", "import", "--image-format", "2", str(path), f"{pool}/{name}"))
                    cli.run("rbd", "rm", "--no-progress", f"{pool}/{name}")
                    last = rep == args.repeat - 1
                    os.sync()
                    if kind == "sparse" and last:
                        assert server.proc is not None
                        with RssSampler(server.proc.pid) as rss:
                            took, image, inv = upload(api, bs, path, f"bench-{kind}")
                    else:
                        took, image, inv = upload(api, bs, path, f"bench-{kind}")
                    if (inv.get("md5Sum"), inv.get("sha512Sum")) != (bounds[kind]["md5sum"],
                                                                     bounds[kind]["sha512sum"]):
                        raise RuntimeError(f"{kind}: md5Sum/sha512Sum {inv.get('md5Sum')}/{inv.get('sha512Sum')}"
                                           " differ from md5sum/sha512sum of the file")
                    ups[kind].ours.append(took)
                    if last:
                        sources[kind] = image
                    else:
                        forget_image(api, image)
                    print(f"  upload {kind} #{rep + 1}: rbd import {ups[kind].cli[-1]:.2f}s, "
                          f"imgstore {took:.2f}s", flush=True)
            rows += ups.values()

        exports = {k: Row(f"export {labels[k]}", p.stat().st_size, target=">= 0.90x",
                          passes=lambda x: x >= 0.9) for k, p in files.items()}
        export_api: dict[str, float] = {}
        for kind, image in sources.items():
            t0 = time.perf_counter()
            r = api.put(f"/backup-storage/{bs}/actions", json={"exportImageFromBackupStorage": {"imageUuid": image}})
            r.raise_for_status()
            export_api[kind] = time.perf_counter() - t0
            url = r.json()["imageUrl"]
            for rep in range(args.repeat):
                theirs, ours = work / f"rbd-export-{kind}.raw", work / f"http-export-{kind}.raw"
                # each side starts with no dirty page of the other's file left to write back
                os.sync()
                exports[kind].cli.append(cli.run("rbd", "export", "--no-progress", f"{pool}/{image}", str(theirs)))
                if rep == 0 and not same_file(theirs, files[kind]):
                    raise RuntimeError(f"rbd export of the {kind} image differs from its source")
                theirs.unlink()
                os.sync()
                exports[kind].ours.append(download(url, ours))
                if rep == 0 and not same_file(ours, files[kind]):
                    raise RuntimeError(f"the exported {kind} image differs from its source")
                ours.unlink()
                print(f"  export {kind} #{rep + 1}: rbd export {exports[kind].cli[-1]:.2f}s, "
                      f"imgstore {exports[kind].ours[-1]:.2f}s", flush=True)
        rows += exports.values()
        floors = {k: loopback_floor(p.stat().st_size) for k, p in files.items()}
        report(args, env, rows, rss, export_api, can_upload, started_kib, bounds, labels, floors)
        return 0 if all(r.passes(r.rates()[2]) for r in rows) and (rss is None or rss.peak_kib < 200 * 1024) else 1
    finally:
        if api is not None:
            if bs is not None:
                api.delete(f"/backup-storage/{bs}")  # removes the storage's cephx key too
            api.close()
        server.stop()
        subprocess.run(["ceph", *cli.conf, "osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it"],
                       capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def report(args: argparse.Namespace, env: dict[str, str], rows: list[Row], rss: RssSampler | None,
           export_api: dict[str, float], can_upload: bool, started_kib: int,
           bounds: dict[str, dict[str, float | str]], labels: dict[str, str],
           floors: dict[str, float]) -> None:
    load = os.getloadavg()
    print()
    print(f"cluster {args.cluster} (mon {env['CEPH_MON_HOST']}), {os.cpu_count()} CPUs, load "
          f"{load[0]:.1f}/{load[1]:.1f}, medians of {args.repeat}, "
          "HTTP clients: curl -T up, http.client readinto down"
          + (f", MALLOC_ARENA_MAX={args.malloc_arena_max}" if args.malloc_arena_max else ""))
    print(f"{'':<34}{'imgstore':>13}{'rbd CLI':>13}{'ratio':>9}  {'target':<10}")
    for row in rows:
        ours, cli, ratio = row.rates()
        verdict = "ok" if row.passes(ratio) else "MISSED"
        print(f"{row.what:<34}{ours:>8.0f} MiB/s{cli:>8.0f} MiB/s{ratio:>8.2f}x  {row.target:<10}{verdict}")
    if args.export_only:
        print("upload: not measured (--export-only)")
    elif rss is not None:
        peak = max(rss.peak_kib, rss.hwm_kib) / 1024
        verdict = "ok" if peak < 200 else "MISSED"
        print(f"{'server RSS during 4 GiB upload':<34}{peak:>8.0f} MiB  (idle before: {rss.before_kib / 1024:.0f} MiB,"
              f" sampled peak {rss.peak_kib / 1024:.0f} MiB, VmHWM {rss.hwm_kib / 1024:.0f} MiB)  < 200 MiB  {verdict}")
    elif not can_upload:
        print("upload: skipped (no AddImage upload API on this server)")
    for kind, floor in bounds.items():
        row = next((r for r in rows if r.what == f"upload {labels[kind]}"), None)
        cli = f"; rbd import {statistics.median(row.cli):.2f}s" if row is not None and row.cli else ""
        print(f"hash floor of the {kind} upload (hashlib, file in page cache): md5 {floor['md5']:.2f}s, "
              f"sha512 {floor['sha512']:.2f}s, both at once on two threads {floor['both']:.2f}s{cli}")
    for kind, took in floors.items():
        row = next((r for r in rows if r.what == f"export {labels[kind]}"), None)
        cli = f"; rbd export {statistics.median(row.cli):.2f}s" if row is not None and row.cli else ""
        print(f"loopback floor of the {kind} export: its bytes through a TCP socket alone "
              f"{took:.2f}s{cli}")
    print(f"server RSS once started and the storage added: {started_kib / 1024:.0f} MiB")
    for kind, took in export_api.items():
        print(f"ExportImageFromBackupStorage ({kind}): {took:.2f}s (md5 from the write, or read once)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cluster", default="c1")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--malloc-arena-max", type=int, default=0,
                    help="run the server with MALLOC_ARENA_MAX=N (default: as shipped)")
    ap.add_argument("--export-only", action="store_true",
                    help="no upload rows: the images are uploaded once, untimed (quicker runs)")
    ap.add_argument("--random-gib", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--sparse-gib", type=int, default=4, help=argparse.SUPPRESS)
    return measure(ap.parse_args())


if __name__ == "__main__":
    sys.exit(main())
