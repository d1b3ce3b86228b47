#!/usr/bin/env python3
"""Per-chunk cost of oslo's InspectWrapper on a 1 GiB stream vs imgstore's head-only inspect.

    .venv/bin/python scripts/bench_inspect.py [CHUNK_BYTES]   (default 4 MiB; try 65536)

Why imageformat.inspect feeds oslo's inspectors the first 64 KiB only, instead of
wrapping the whole stream in ``InspectWrapper``: the decision has to be taken at the head
anyway (raw bytes go into Ceph as they arrive), and the wrapper costs tens of
microseconds for every chunk after it, on the event loop. In memory, no I/O.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from oslo_utils.imageutils import format_inspector as fi

from imgstore.services.images.formats.inspect import HEAD_SIZE, inspect

CHUNK = int(sys.argv[1]) if len(sys.argv) > 1 else 4 << 20
N = (1 << 30) // CHUNK  # 1 GiB


def main() -> None:
    body = os.urandom(CHUNK)
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", f"{d}/x.qcow2", "1G"], check=True)
        with open(f"{d}/x.qcow2", "rb") as f:
            qcow2_head = f.read(CHUNK)
    for name, first in (("raw", body), ("qcow2", qcow2_head + body[len(qcow2_head):])):
        chunks = [first] + [body] * (N - 1)
        started = time.perf_counter()
        wrapper = fi.InspectWrapper(iter(chunks))
        for _ in wrapper:
            pass
        wrapped = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(20):
            inspect(first[:HEAD_SIZE])
        head = (time.perf_counter() - started) / 20
        print(f"{name}: InspectWrapper over 1 GiB in {CHUNK >> 10} KiB chunks: {wrapped * 1000:.0f} ms, "
              f"{wrapped / N * 1e6:.0f} us/chunk; imageformat.inspect(64 KiB head) once: "
              f"{head * 1e6:.0f} us, then nothing per chunk (found {wrapper.format})")


if __name__ == "__main__":
    main()
