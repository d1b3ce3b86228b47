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

_M_TRIM_THRESHOLD = -1  # mallopt parameters, as MALLOC_TRIM_THRESHOLD_,
_M_MMAP_THRESHOLD = -3  # MALLOC_MMAP_THRESHOLD_
_M_ARENA_MAX = -8  # and MALLOC_ARENA_MAX
MMAP_THRESHOLD = 8 << 20
TRIM_THRESHOLD = 32 << 20


def limit_arenas(arenas: int = 1) -> None:
    """One malloc arena for every thread (MALLOC_ARENA_MAX). glibc gives each thread that
    allocates an arena of its own, and librados and the image threads then held on to
    hundreds of MiB they no longer used. Not even two: the second one's free top is out of
    trim_heap()'s reach (``malloc_trim`` shrinks the main arena's top only, free() another's
    only beyond the trim threshold), and librbd's read buffers, made in the pool's threads,
    landed there: each export or CalculateImageHash left ~15 MiB resident for good."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, arenas)


def fix_mmap_threshold(mmap: int = MMAP_THRESHOLD, trim: int = TRIM_THRESHOLD) -> None:
    """Blocks of ``mmap`` bytes or more are mapped on their own and unmapped when freed;
    smaller ones come from the arenas, which keep up to ``trim`` bytes free at their top.

    glibc's default threshold moves up to the largest mapped block freed so far: once the
    start's scrypt (crypto.py, in a login-hash thread) had freed its 16 MiB, every later
    login's 16 MiB came from an arena too and stayed resident for good. Fixed above the
    image streams' 4 MiB buffers and below scrypt's block, it no longer moves: the hash's
    block goes back to the kernel when freed, and the buffers are still reused from the
    arenas (under 4 MiB, each of them was a fresh mapping to fault in, page by page: the
    export's server CPU went up with it). A fixed threshold leaves the trim threshold at
    glibc's 128 KiB, where the arenas gave a freed buffer back to the kernel and faulted it
    in again for the next one: ``trim`` is what glibc's own moving threshold had set it to.
    trim_heap() still hands a stream's buffers back after it ends (ceph/rbd's trim_soon)."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, mmap)
        mallopt(_M_TRIM_THRESHOLD, trim)


def trim_heap() -> None:
    """``malloc_trim(0)``: an image stream frees tens of MiB of 4 MiB buffers (ours and
    librbd's) in the middle of glibc's arenas, which keep them mapped; an idle server
    would carry each upload's peak on into the next. A few ms: call it from a pool thread."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def collect_old_garbage() -> None:
    """A full pass of the cyclic garbage collector, at the end of an image stream.

    With :func:`tune_garbage_collector`'s thresholds a full pass comes only after some
    hundred million allocations. What a stream kept alive for its seconds (its writer,
    its tasks, the request around it) is promoted to the old generation on the way, and
    what of it refers to itself stayed there, dead, for hundreds of streams: a server
    grew with every upload (the README's bench_images row). A stream's end is a quiet
    moment for the pass, which skips the frozen start-up objects."""
    gc.collect()


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
