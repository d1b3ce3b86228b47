"""The server process's memory: glibc's arenas and heap, Python's garbage collector.

One place for the knobs a long-lived process with thousands of librados threads needs,
each measured where it is set (scripts/bench_images.py, scripts/bench_tracker.py).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from typing import Any

_M_ARENA_MAX = -8  # mallopt parameter, as MALLOC_ARENA_MAX


def limit_arenas(arenas: int = 2) -> None:
    """glibc gives every thread that allocates its own arena; librados and the image
    threads then hold on to hundreds of MiB they no longer use. Same as MALLOC_ARENA_MAX."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, arenas)


def trim_heap() -> None:
    """``malloc_trim(0)``: an image stream frees tens of MiB of 4 MiB buffers (ours and
    librbd's) in the middle of glibc's arenas, which keep them mapped; an idle server
    would carry each upload's peak on into the next. A few ms: call it from a pool thread."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector's pauses off the API's latency.

    Start-up objects (modules, routes, schemas: ~200 000 that live as long as the process)
    are frozen out of its full passes, and the young generation is collected every 50 000
    allocations instead of 700, so the rows a ping round reads die young instead of being
    promoted to the old generation and scanned there: full passes were the API's worst
    latencies during ping rounds (scripts/bench_tracker.py; the figures are in the README's
    benchmark table)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None
