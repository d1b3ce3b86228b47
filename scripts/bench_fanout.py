#!/usr/bin/env python3
"""Benchmark: AddImage to two storages at once vs two separate AddImage calls.

ZStack downloads an image once per backup storage; imgstore reads the source once and
hands each piece to every storage's writer (services/images/intake.py). One raw image
served over http on loopback, storages on two clusters, interleaved, median of N runs:
wall time of one AddImage naming both storages, and of two AddImage calls one after the
other (what a once-per-storage download costs). Also counted: the source's GETs.

    .venv/bin/python scripts/bench_fanout.py [--runs 3] [--size-mib 256] [--a c1] [--b c2]
"""
from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from _bench import Api, Server, free_port  # noqa: E402
from bench_migrate import TwoStorages, arguments, two_storages, write_image  # noqa: E402

GETS = [0]


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        GETS[0] += 1
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


def add(api: Api, url: str, storages: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = api.post("/images", json={"params": {"name": "fan", "url": url, "format": "raw",
                                             "backupStorageUuids": storages}})
    done = api.wait_job(r, timeout=1800)
    took = time.perf_counter() - t0
    assert done.status_code == 200, done.text
    return took, done.json()["inventory"]["uuid"]


def drop(api: Api, image: str) -> None:
    assert api.delete(f"/images/{image}").status_code == 200


def main() -> int:
    args = arguments(__doc__ or "", "a", "b")
    work = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    (work / "files").mkdir()
    write_image(work / "files" / "disk.raw", args.size_mib, 0)
    port = free_port()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", port), functools.partial(_Handler, directory=str(work / "files")))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{port}/disk.raw"
    server = Server(work / "data", password="bench", log_level="warning",
                    env={"IMGSTORE_IMAGE_URL_ALLOW": "127.0.0.1", "IMGSTORE_IMAGE_DELETION_POLICY": "Direct"})
    try:
        with two_storages(server, args.a, args.b) as two:
            return measure(args, url, two)
    finally:
        httpd.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, url: str, two: TwoStorages) -> int:
    """One AddImage naming both storages vs one per storage, interleaved; the table."""
    api, (a, b) = two.api, two.uuids
    drop(api, add(api, url, [a])[1])  # warm-up
    fan, separate, fan_gets, separate_gets = [], [], [], []
    for _ in range(args.runs):
        GETS[0] = 0
        took, image = add(api, url, [a, b])
        fan.append(took)
        fan_gets.append(GETS[0])
        drop(api, image)
        GETS[0] = 0
        t1, i1 = add(api, url, [a])
        t2, i2 = add(api, url, [b])
        separate.append(t1 + t2)
        separate_gets.append(GETS[0])
        drop(api, i1)
        drop(api, i2)
    f, s = statistics.median(fan), statistics.median(separate)
    print(f"runs: {args.runs}, {args.size_mib} MiB raw over http, storages on {args.a} and {args.b}")
    print(f"{'measure':<40}{'median':>10}{'source GETs':>14}")
    print(f"{'one AddImage, two storages':<40}{f:>9.2f}s{max(fan_gets):>14}")
    print(f"{'two AddImage calls, one storage each':<40}{s:>9.2f}s{max(separate_gets):>14}")
    print(f"ratio one / two: {f / s:.2f}x")
    return 0

if __name__ == "__main__":
    sys.exit(main())
